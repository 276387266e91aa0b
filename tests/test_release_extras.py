"""The release's files beyond the original's code (ava.data.extras): what `ava synth` writes for them,
reading them (and refusing files of another structure), and their use by `ava eval`."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from ava.data.collate import collate
from ava.data.dataset import CaptureDataset
from ava.data.extras import CaptureExtras, WithExtras, read_expression_codes, read_headset_encodings
from ava.data.formats import encode_avif
from ava.data.layout import CaptureLayout
from ava.data.safe_load import RefusedPickle
from ava.errors import UserError
from tests.test_train import run_cli


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _captures(root):
    return sorted(path for path in root.iterdir() if (path / "decoder").is_dir())


def test_synth_images_are_the_render_over_the_background_through_the_mask(tiny_capture_set):
    capture = _captures(tiny_capture_set)[0]
    dataset = CaptureDataset(capture, downsample=128)
    extras = CaptureExtras(capture)
    assert sorted(extras.background_cameras()) == sorted(dataset.reader.camera_ids)
    foreground = background = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        height, width = sample["image"].shape[-2:]
        mask = extras.mask(sample["cameraid"], sample["frameid"], (width, height))[0]
        backdrop = extras.background(sample["cameraid"], (width, height))
        image = sample["image"].numpy()
        empty = mask < 0.02
        # Where nothing covers a pixel the photo is the backdrop, up to AVIF compression (a few levels).
        assert np.abs(image - backdrop)[:, empty].mean() < 3.0
        foreground += int((mask > 0.98).sum())
        background += int(empty.sum())
    assert foreground > 0 and background > 0  # both kinds of pixel occur


def test_masks_and_backgrounds_as_the_release_may_name_them(tmp_path, tiny_capture_set):
    capture = _captures(tiny_capture_set)[0]
    copy = tmp_path / capture.name
    layout = CaptureLayout(copy)
    # Backgrounds as cam{C}.avif under a folder; masks without the camera folder: both still read.
    layout.background_zip.parent.mkdir(parents=True)
    with zipfile.ZipFile(layout.background_zip, "w") as archive:
        archive.writestr("background_image/cam401031.avif", encode_avif(np.full((8, 6, 3), 77, np.uint8)))
    layout.foreground_mask_zip("401031").parent.mkdir(parents=True)
    with zipfile.ZipFile(layout.foreground_mask_zip("401031"), "w") as archive:
        archive.writestr("000003.avif", encode_avif(np.full((8, 6), 255, np.uint8)))
    extras = CaptureExtras(copy)
    assert np.allclose(extras.background("401031", (3, 4)), 77, atol=2)
    assert extras.background("400002", (3, 4)) is None
    assert np.allclose(extras.mask("401031", "3", (3, 4)), 1.0, atol=0.02)
    assert extras.mask("401031", "4", (3, 4)) is None  # a dropped frame
    assert extras.mask("400002", "3", (3, 4)) is None  # no archive
    with zipfile.ZipFile(layout.background_zip, "a") as archive:
        archive.writestr("401031.avif", b"")
    with pytest.raises(UserError, match="two backgrounds of camera 401031"):
        CaptureExtras(copy).background_cameras()


def test_samples_get_background_and_mask(tiny_capture_set):
    capture = _captures(tiny_capture_set)[0]
    dataset = WithExtras(CaptureDataset(capture, downsample=128), background=True, mask=True)
    batch = collate([dataset[0], dataset[1]])
    assert batch["background"].shape == batch["image"].shape and batch["background_valid"].all()
    assert batch["fgmask"].shape == (2, 1, *batch["image"].shape[-2:]) and batch["fgmask_valid"].all()
    assert 0 <= float(batch["fgmask"].min()) and float(batch["fgmask"].max()) <= 1


def test_expression_codes_in_the_datasheets_format(tmp_path):
    codes = np.random.default_rng(0).normal(size=(3, 256)).astype(np.float32)
    path = tmp_path / "aeparams_1440000.pkl"
    for keys in ([12, 13, 14], ["000012", "13", "0014"], [np.int64(12), np.int32(13), np.uint16(14)]):
        for shape in ((256,), (1, 256), (16, 4, 4)):
            path.write_bytes(pickle.dumps({key: code.reshape(shape) for key, code in zip(keys, codes)}))
            read = read_expression_codes(path)
            assert read.frames == ["000012", "000013", "000014"]
            assert np.array_equal(read.codes, codes)
            assert torch.equal(read.grid("14"), torch.from_numpy(codes[2]).view(16, 4, 4))
            assert read.code("15") is None


@pytest.mark.parametrize("value, found", [
    ([np.zeros(256)], "list of 1 ndarray float64 [256]"),
    ({12: np.zeros(255)}, "dict of 1 int -> ndarray float64 [255]"),
    ({"neutral": np.zeros(256)}, "a key 'neutral' is not a frame number"),
    ({12: "code"}, "dict of 1 int -> str"),
    ({}, "empty dict"),
])
def test_expression_codes_of_another_structure_are_one_clear_error(tmp_path, value, found):
    path = tmp_path / "aeparams_1440000.pkl"
    path.write_bytes(pickle.dumps(value))
    with pytest.raises(UserError, match="expected a dict frame id -> 256 numbers") as error:
        read_expression_codes(path)
    assert found in str(error.value) and str(path) in str(error.value)


class _Command:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_expression_code_file_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "aeparams_1440000.pkl"
    path.write_bytes(pickle.dumps({12: _Command(marker)}))
    with pytest.raises(RefusedPickle, match="system"):
        read_expression_codes(path)
    assert not marker.exists()


def test_headset_encodings_tensor_rows_follow_the_frame_list(tmp_path):
    codes = torch.randn(4, 256)
    torch.save(codes, tmp_path / "encodings_gt.pt")
    (tmp_path / "encodings_framelist.csv").write_text("seg_id,frame_id\nEXP_a,7\nEXP_a,8\nEXP_b,20\nEXP_b,21\n")
    read = read_headset_encodings(tmp_path / "encodings_gt.pt", tmp_path / "encodings_framelist.csv")
    assert read.frames == ["000007", "000008", "000020", "000021"] and read.segments == ["EXP_a"] * 2 + ["EXP_b"] * 2
    assert np.array_equal(read.codes, codes.numpy())
    torch.save({7: codes[0], "8": codes[1].view(16, 4, 4)}, tmp_path / "as_dict.pt")
    read = read_headset_encodings(tmp_path / "as_dict.pt", tmp_path / "encodings_framelist.csv")
    assert read.frames == ["000007", "000008"] and read.segments == ["EXP_a", "EXP_a"]
    torch.save(codes[:3], tmp_path / "short.pt")
    with pytest.raises(UserError, match=r"holds Tensor float32 \[3, 256\] but .* lists 4 frames"):
        read_headset_encodings(tmp_path / "short.pt", tmp_path / "encodings_framelist.csv")
    with pytest.raises(UserError, match="encodings_framelist.csv, which is missing"):
        read_headset_encodings(tmp_path / "encodings_gt.pt", tmp_path / "absent.csv")


def test_eval_uses_the_recorded_background_and_measures_inside_the_mask(tiny_checkpoints, tmp_path, capsys):
    checkpoint = tiny_checkpoints[1]
    real, plate = tmp_path / "real", tmp_path / "plate"
    assert run_cli(["eval", str(checkpoint), "-o", str(real), "--frames", "2"]) == 0
    note = capsys.readouterr().err
    assert run_cli(["eval", str(checkpoint), "-o", str(plate), "--frames", "2", "--background", "plate"]) == 0
    first, second = (json.loads((folder / "metrics.json").read_text()) for folder in (real, plate))
    cameras = len(first["cameras"]) * 2  # two identities
    assert first["backgrounds"] == {"real": cameras, "plate": 0}
    assert second["backgrounds"] == {"real": 0, "plate": cameras}
    assert f"recorded (background_image.zip) for {cameras} of {cameras} cameras" in " ".join(note.split())
    overall = first["checkpoints"]["A"]["groups"]["trained"]["model"]
    assert overall["psnr_mask"] is not None and overall["psnr_mask"] > 0
    assert overall["psnr_mask"] != overall["psnr"]
    assert overall["psnr"] != second["checkpoints"]["A"]["groups"]["trained"]["model"]["psnr"]  # another background
    samples = (real / "samples.csv").read_text().splitlines()
    assert "background" in samples[0] and all(",real," in line for line in samples[1:])
