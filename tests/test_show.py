"""`ava show` on `ava synth` output and on a real-layout capture with every part (segmentation and
headset archives added as the release lays them out): pictures, projection, missing parts, bad input."""

from __future__ import annotations

import io
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_train import run_cli


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _copy_capture(captures, destination):
    """The first capture of a synthetic set (and its topology) copied to `destination`."""
    source = sorted(path for path in captures.iterdir() if (path / "decoder").is_dir())[0]
    destination.mkdir()
    shutil.copy(captures / "face_topology.obj", destination / "face_topology.obj")
    return shutil.copytree(source, destination / source.name)


def _zip(path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def add_release_only_parts(root, invalid_keypoints: int = 3) -> None:
    """What a downloaded capture has and `ava synth` does not write: segmentation_parts zips (labels
    in horizontal bands), the encoder folder (frame list, five IR zips with their own frame numbers)
    and, in one frame's keypoints, rows without inliers."""
    from ava.data import layout as names
    from ava.data.calibration import read_calibration
    from ava.data.formats import format_frame_list, format_npy, member_frame, parse_frame_list, parse_npy
    from ava.data.layout import ENCODER_CAMERAS, CaptureLayout

    layout = CaptureLayout(root)
    frames = parse_frame_list(layout.frame_list.read_text(), "frame_list.csv")
    for camera in read_calibration(layout.calibration):
        with zipfile.ZipFile(layout.image_zip(camera.camera_id)) as archive:
            width, height = Image.open(io.BytesIO(archive.read(archive.namelist()[0]))).size
        labels = np.zeros((height, width), dtype=np.uint8)
        labels[: height // 3, width // 4: 3 * width // 4] = 1  # hair
        labels[2 * height // 3:] = 2  # body
        labels[height // 2: height // 2 + 2, width // 3: 2 * width // 3] = 6  # upper lip
        _zip(layout.segmentation_zip(camera.camera_id),
             {names.segmentation_member(camera.camera_id, member_frame(frame)): _png(labels) for _, frame in frames})
    headset_frames = [("EXP_free_face", str(100 + index)) for index in range(3)]
    layout.encoder_frame_list.parent.mkdir(parents=True, exist_ok=True)
    layout.encoder_frame_list.write_text(format_frame_list(headset_frames))
    for index, camera in enumerate(ENCODER_CAMERAS):
        ramp = np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (16, 1))
        _zip(layout.encoder_zip(camera), {f"{camera}/{member_frame(frame)}.png": _png(np.roll(ramp, 4 * index, axis=1))
                                          for _, frame in headset_frames})
    with zipfile.ZipFile(layout.keypoints_zip) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    first = sorted(members)[0]
    rows = parse_npy(members[first]).reshape(-1, 6).copy()
    rows[:invalid_keypoints, 4] = 0  # no inliers
    members[first] = format_npy(rows)
    _zip(layout.keypoints_zip, members)


def test_show_writes_every_picture_of_a_real_layout_capture(tiny_capture_set, tmp_path, capsys):
    from ava.data.calibration import read_calibration
    from ava.data.layout import CaptureLayout

    root = _copy_capture(tiny_capture_set, tmp_path / "data")
    add_release_only_parts(root)
    camera = read_calibration(CaptureLayout(root).calibration)[1].camera_id
    frame = int((CaptureLayout(root).frame_list.read_text().splitlines()[1]).split(",")[1])
    out = tmp_path / "show"
    assert run_cli(["show", str(root), "--camera", camera, "--frame", str(frame), "-o", str(out)]) == 0
    subject = root.name.split("--")[-1]
    prefix = f"{subject}_{camera}_{frame:06d}"
    parts = ("image", "mesh", "keypoints", "segmentation", "cameras", "background", "mask")
    expected = {f"{prefix}_{part}.png" for part in parts}
    expected.add(f"{subject}_headset_000100.png")  # the headset's own frame numbers: its first frame
    assert {path.name for path in out.iterdir()} == expected
    err = capsys.readouterr().err
    assert "skipped" not in err and "error" not in err
    # The image is the sample training loads, at the size it is stored (20x32 here).
    image = np.asarray(Image.open(out / f"{prefix}_image.png"))
    assert image.shape == (32, 20, 3)
    for part in parts[1:]:
        picture = np.asarray(Image.open(out / f"{prefix}_{part}.png"))
        assert picture.shape[0] >= 400 and picture.std() > 10, part  # enlarged and not blank
    assert run_cli(["show", str(root), "--camera", camera, "--frame", str(frame), "-o", str(out),
                    "--parts", "mesh", "--mesh-style", "wireframe"]) == 0


def test_overlays_follow_the_calibration(tiny_capture_set, tmp_path):
    """The projected mesh covers the head in the photo: a smooth plate fitted to the pixels outside
    it explains them; moving the camera 40 mm (about 3 pixels here) leaves head pixels outside."""
    import torch.nn.functional as F

    from ava.runtime.metrics import fit_plate, head_mask
    from ava.show.run import Capture

    root = sorted(path for path in tiny_capture_set.iterdir() if (path / "decoder").is_dir())[0]
    capture = Capture(root, None, None, None)
    sample, stats, image = capture.sample, capture.dataset.stats, capture.sample["image"]

    def residual_outside(campos: torch.Tensor) -> float:
        moved = dict(sample, campos=campos)
        mask = head_mask(moved, torch.from_numpy(stats.vertmean), stats.vertstd).float()[None]
        grown = F.max_pool2d(mask[None], 3, 1, 1)[0]
        plate = fit_plate(torch.zeros_like(image), grown, image)
        return float((((plate - image) ** 2) * (1 - grown)).sum() / (1 - grown).sum() / 3)

    correct = residual_outside(sample["campos"])
    assert correct < 5.0
    assert residual_outside(sample["campos"] + 40.0 * sample["camrot"][0]) > 4 * correct
    # Keypoints (world frame) through the head pose land where the mesh vertices they were made
    # from project: the keypoints of `ava synth` are mesh vertices.
    values, present = capture.reader_with(with_keypoints=True).load_keypoints(capture.frame)
    pose = sample["headpose"].double()
    head = (torch.from_numpy(values[present, :3]).double() - pose[:, 3]) @ pose[:, :3]
    pixels, _ = capture.project(head)
    vertex_pixels, _ = capture.project(capture.vertices)
    nearest = np.min(np.linalg.norm(pixels[:, None] - vertex_pixels[None], axis=-1), axis=1)
    assert nearest.max() < 0.05


def test_show_notes_absent_parts_and_errs_for_requested_ones(tiny_capture_set, tmp_path, capsys):
    root = _copy_capture(tiny_capture_set, tmp_path / "data")
    out = tmp_path / "show"
    # Synthetic output has no segmentation (it has headset sessions): noted, not an error.
    assert run_cli(["show", str(root), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped segmentation" in err and "skipped headset" not in err and "error" not in err
    assert len(list(out.glob("*.png"))) == 7 and len(list(out.glob("*_headset_*.png"))) == 1
    (root / "decoder" / "keypoints_3d" / "keypoints_3d.zip").unlink()
    shutil.rmtree(out)
    assert run_cli(["show", str(root), "-o", str(out), "--parts", "image", "keypoints", "cameras"]) == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "error" in line] == [
        line for line in err.splitlines() if line.startswith("error (keypoints)")]
    assert "download the keypoints_3d asset" in err
    assert sorted(path.name.rsplit("_", 1)[1] for path in out.glob("*.png")) == ["cameras.png", "image.png"]


def test_show_bad_input(tiny_capture_set, tmp_path, capsys):
    root = sorted(path for path in tiny_capture_set.iterdir() if (path / "decoder").is_dir())[0]
    out = str(tmp_path / "show")
    assert run_cli(["show", str(tiny_capture_set), "-o", out]) == 2
    assert "is not a capture folder" in capsys.readouterr().err
    assert run_cli(["show", str(root), "-o", out, "--camera", "999999"]) == 2
    assert "camera 999999 is not in" in capsys.readouterr().err
    assert run_cli(["show", str(root), "-o", out, "--frame", "1"]) == 2
    assert "frame 1 is not in" in capsys.readouterr().err
    assert run_cli(["show", str(root), "-o", out, "--downsample", "0"]) == 2
    assert "--downsample must be at least 1" in capsys.readouterr().err
