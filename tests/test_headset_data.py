"""Synthetic headset sessions (`ava synth`): the real encoder layout, their own timing, the ground
truth beside the capture, and `ava.data.encoder.HeadsetDataset` reading them back."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ava.data.encoder import HeadsetDataset, read_encoder_truth
from ava.data.formats import decode_image, parse_frame_list
from ava.data.ids import read_ids_csv
from ava.data.layout import ENCODER_CAMERAS, CaptureLayout
from ava.errors import UserError
from ava.synth import SynthConfig, generate

TINY = dict(n_ids=2, n_frames=14, n_cams=2, downsample=128, texture_size=64, prims_per_side=16, voxels=4,
            mesh_columns=24, mesh_rows=16, keypoints=False, workers=1, headset_size=32)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth-headset")
    generate(out, SynthConfig(**TINY), progress=False)
    return out


def _captures(dataset_dir: Path) -> list[Path]:
    return [dataset_dir / capture.folder for capture in read_ids_csv(dataset_dir / "ids.csv")]


def _segments(rows: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for segment, frame in rows:
        grouped.setdefault(segment, []).append(frame)
    return grouped


def test_headset_session_in_the_release_layout(dataset_dir):
    for root in _captures(dataset_dir):
        layout = CaptureLayout(root)
        dome = _segments(parse_frame_list(layout.frame_list.read_text(), "dome"))
        headset_rows = parse_frame_list(layout.encoder_frame_list.read_text(), "headset")
        headset = _segments(headset_rows)
        assert list(headset) == list(dome)  # the same script of segments, in the same order
        assert all(len(headset[s]) != len(dome[s]) for s in dome)  # each segment its own length
        assert len(set(frame for _, frame in headset_rows)) == len(headset_rows)
        for camera in ENCODER_CAMERAS:
            with zipfile.ZipFile(layout.encoder_zip(camera)) as archive:
                names = archive.namelist()
                assert names == [f"{camera}/{int(frame):06d}.avif" for _, frame in headset_rows]
                image = decode_image(archive.read(names[0]), mode="L")
            assert image.shape == (32, 32) and image.dtype == np.uint8 and 5 < image.mean() < 250


def test_ground_truth_is_a_monotone_warp_within_each_segment(dataset_dir):
    for root in _captures(dataset_dir):
        layout = CaptureLayout(root)
        dome_rows = parse_frame_list(layout.frame_list.read_text(), "dome")
        dome_position = {frame: index for index, (_, frame) in enumerate(dome_rows)}
        dome_segment = dict((frame, segment) for segment, frame in dome_rows)
        truth = read_encoder_truth(root)
        assert set(truth.rig) == set(ENCODER_CAMERAS)
        for segment, frames in _segments(parse_frame_list(layout.encoder_frame_list.read_text(), "headset")).items():
            shown = [dome_position[truth.dome_frame[frame]] for frame in frames]
            assert all(dome_segment[truth.dome_frame[frame]] == segment for frame in frames)
            assert all(later >= earlier for earlier, later in zip(shown, shown[1:]))
            segment_positions = [dome_position[f] for s, f in dome_rows if s == segment]
            assert shown[0] == segment_positions[0] and shown[-1] == segment_positions[-1]


def test_views_follow_the_expression_exactly(dataset_dir):
    """Headset frames showing the same dome frame differ by sensor noise only; frames that show
    different jaw openings differ far more in the lower-face cameras."""
    root = _captures(dataset_dir)[0]
    truth = read_encoder_truth(root)
    data = HeadsetDataset(root)
    by_dome: dict[str, list[int]] = {}
    for index, (_, frame) in enumerate(data.frames):
        by_dome.setdefault(truth.dome_frame[frame], []).append(index)
    repeats = [indices for indices in by_dome.values() if len(indices) > 1]
    assert repeats, "the warp repeats some frames"

    def difference(first: int, second: int, views=slice(None)) -> float:
        # Mean absolute difference of 4x4 block means: sensor noise averages out, shapes do not.
        change = torch.nn.functional.avg_pool2d(data[first]["headset"] - data[second]["headset"], 4)
        return float(change[views].abs().mean())

    noise = max(difference(*indices[:2]) for indices in repeats)
    assert noise < 1.0
    jaw = list(range(len(data.frames)))  # at this size most segments have one dome frame
    openings = [truth.expression[data.frames[index][1]]["jaw_open"] for index in jaw]
    closed, wide = jaw[int(np.argmin(openings))], jaw[int(np.argmax(openings))]
    assert max(openings) - min(openings) > 0.4
    mouth_views = [ENCODER_CAMERAS.index(c) for c in ("cam-cyclop", "cam-left-mouth", "cam-right-mouth")]
    assert difference(closed, wide, mouth_views) > 2.5 * noise


def test_headset_dataset_samples_and_preload(dataset_dir):
    root = _captures(dataset_dir)[1]
    data = HeadsetDataset(root, size=16)
    rows = parse_frame_list(CaptureLayout(root).encoder_frame_list.read_text(), "headset")
    assert data.frames == rows and len(data) == len(rows)
    sample = data[3]
    assert sample["headset"].shape == (5, 16, 16) and sample["headset"].dtype == torch.float32
    assert (sample["segment"], sample["frameid"], sample["index"], sample["skipped"]) == (*rows[3], 3, "")
    assert list(data.segments()) == list(_segments(rows))
    assert sum(len(indices) for indices in data.segments().values()) == len(rows)
    loaded = torch.stack([data[i]["headset"] for i in range(len(data))])
    data.preload()
    assert torch.equal(torch.stack([data[i]["headset"] for i in range(len(data))]), loaded)
    jaw_only = HeadsetDataset(root, segments=["EXP_jaw_open"])
    assert {segment for segment, _ in jaw_only.frames} == {"EXP_jaw_open"}
    assert jaw_only[0]["headset"].shape == (5, 32, 32)  # stored size when none is asked for


def test_switching_the_headset_off_leaves_the_dome_files_unchanged(dataset_dir, tmp_path):
    generate(tmp_path, SynthConfig(**{**TINY, "headset": False}), progress=False)

    def digests(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    for with_headset in _captures(dataset_dir):
        without = tmp_path / with_headset.name
        assert not (without / "encoder").exists() and not (without / "encoder_truth.json").exists()
        assert digests(without / "decoder") == digests(with_headset / "decoder")


def test_missing_or_damaged_headset_data_is_a_clear_error(dataset_dir, tmp_path):
    import shutil

    root = tmp_path / "capture"
    shutil.copytree(_captures(dataset_dir)[0], root)
    (root / "encoder_truth.json").unlink()
    with pytest.raises(UserError, match="only synthetic captures"):
        read_encoder_truth(root)
    layout = CaptureLayout(root)
    rows = parse_frame_list(layout.encoder_frame_list.read_text(), "headset")
    # A frame missing from one camera's zip is left out and listed.
    path = layout.encoder_zip("cam-left-mouth")
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in list(members.items())[1:]:
            archive.writestr(name, data)
    data = HeadsetDataset(root)
    assert len(data) == len(rows) - 1 and data.frames[0] == rows[1]
    assert len(data.construction_problems) == 1 and "cam-left-mouth" in data.construction_problems[0].path
    with pytest.raises(UserError, match="no usable headset frame in segments"):
        HeadsetDataset(root, segments=["EXP_nothing"])
    path.unlink()
    with pytest.raises(UserError, match="ava download --assets encoder"):
        HeadsetDataset(root)
