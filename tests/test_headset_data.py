"""Synthetic headset sessions (`ava synth`): the real encoder layout, takes that are performances of
their own, a headset that slips, the ground truth beside the capture, how hard the takes are to
align (ava.driver.truth), and `ava.data.headset_capture.HeadsetDataset` reading them back."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ava.data.formats import decode_image, parse_frame_list
from ava.data.headset_capture import HeadsetDataset, read_encoder_truth
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
    lengths = []
    for root in _captures(dataset_dir):
        layout = CaptureLayout(root)
        dome = _segments(parse_frame_list(layout.frame_list.read_text(), "dome"))
        headset_rows = parse_frame_list(layout.encoder_frame_list.read_text(), "headset")
        headset = _segments(headset_rows)
        assert list(headset) == list(dome)  # the same script of segments, in the same order
        lengths += [(len(headset[s]), len(dome[s])) for s in dome]
        assert len(set(frame for _, frame in headset_rows)) == len(headset_rows)
        for camera in ENCODER_CAMERAS:
            with zipfile.ZipFile(layout.encoder_zip(camera)) as archive:
                names = archive.namelist()
                assert names == [f"{camera}/{int(frame):06d}.avif" for _, frame in headset_rows]
                image = decode_image(archive.read(names[0]), mode="L")
            assert image.shape == (32, 32) and image.dtype == np.uint8 and 5 < image.mean() < 250
    assert sum(headset != dome for headset, dome in lengths) > len(lengths) // 2  # takes of their own length


def test_truth_holds_each_headset_frames_own_expression_and_slip(dataset_dir):
    from ava.synth.expressions import CONTROLS

    reflectances = []
    for root in _captures(dataset_dir):
        layout = CaptureLayout(root)
        truth = read_encoder_truth(root)
        assert truth.controls == CONTROLS and set(truth.rig) == set(ENCODER_CAMERAS)
        headset_rows = parse_frame_list(layout.encoder_frame_list.read_text(), "headset")
        dome_rows = parse_frame_list(layout.frame_list.read_text(), "dome")
        assert set(truth.expression) == {frame for _, frame in headset_rows}
        assert set(truth.dome_expression) == {frame for _, frame in dome_rows}
        # A separate performance: away from rest, no headset frame copies a dome frame of its segment.
        dome = {s: np.stack([truth.dome_expression[f] for f in frames]) for s, frames in _segments(dome_rows).items()}
        moving = [(s, truth.expression[f]) for s, f in headset_rows if np.abs(truth.expression[f]).max() > 0.2]
        assert moving
        copies = sum(np.min(np.abs(dome[s] - vector).max(axis=1)) < 1e-9 for s, vector in moving)
        assert copies == 0
        # The headset slips within the session: its pose changes from frame to frame, a little.
        slips = np.stack([truth.slip[f] for _, f in headset_rows])
        assert np.ptp(slips, axis=0).max() > 0.05 and np.abs(slips).max() < 8.0
        reflectances.append((truth.infrared["albedo_exponent"], truth.infrared["albedo_level"]))
    assert len(set(reflectances)) == len(reflectances)  # IR reflectance differs per subject


def test_views_follow_the_expression(dataset_dir):
    """Frames that show different jaw openings differ far more in the lower-face cameras than
    consecutive frames of the neutral segment (same expression: sensor noise and a little slip)."""
    root = _captures(dataset_dir)[0]
    truth = read_encoder_truth(root)
    data = HeadsetDataset(root)

    def difference(first: int, second: int, views=slice(None)) -> float:
        # Mean absolute difference of 4x4 block means: sensor noise averages out, shapes do not.
        change = torch.nn.functional.avg_pool2d(data[first]["headset"] - data[second]["headset"], 4)
        return float(change[views].abs().mean())

    neutral = data.segments()["EXP_neutral_peak"]
    assert len(neutral) > 1
    still = max(difference(a, b) for a, b in zip(neutral, neutral[1:]))
    openings = [truth.expression[frame][truth.controls.index("jaw_open")] for _, frame in data.frames]
    closed, wide = int(np.argmin(openings)), int(np.argmax(openings))
    assert max(openings) - min(openings) > 0.4
    mouth_views = [ENCODER_CAMERAS.index(c) for c in ("cam-cyclop", "cam-left-mouth", "cam-right-mouth")]
    assert difference(closed, wide, mouth_views) > 2.5 * still


def test_the_rig_slips_and_renders_follow_it():
    """HeadsetPlan.cameras follows the slip: a frame's cameras move by its slip, no more."""
    from ava.synth.headset_sessions import plan_headset

    dome_frames = [(segment, str(1000 + index)) for index, segment in
                   enumerate(["EXP_neutral_peak"] * 4 + ["EXP_jaw_open"] * 20 + ["EXP_smile"] * 20)]
    plan = plan_headset(dome_frames, 32, np.random.default_rng(5), (0,))
    assert len(plan.frames) == len(plan.expressions) == len(plan.slip) == len(plan.task_of)
    assert np.all(np.diff(plan.task_of) >= 0) and plan.task_of[-1] < len(dome_frames)
    first, last = plan.cameras(0), plan.cameras(len(plan.frames) - 1)
    moved = max(float(np.linalg.norm(a.campos - b.campos)) for a, b in zip(first, last))
    assert 0.0 < moved < 15.0  # mm: it slips, it does not fall off
    plan.slip[:] = 0.0
    assert all(np.allclose(a.campos, b.campos) for a, b in zip(plan.cameras(0), plan.cameras(len(plan.frames) - 1)))


def test_a_linear_stretch_rarely_finds_the_true_dome_frame():
    """The difficulty measure (ava.driver.truth) on sessions drawn as `ava synth` draws them, at 17
    dome frames a segment: the stretch lands within one frame of the true dome frame for few
    frames, and its expression error is worse than guessing the session's mean expression; with
    the headset takes copied from the dome takes (the earlier synthetic headset) it would be exact."""
    from ava.driver.truth import session_difficulty, session_segments, summarise_difficulty
    from ava.synth.pipeline import plan_subjects

    rows, copied = [], []
    for plan in plan_subjects(SynthConfig(n_ids=6, n_frames=256, headset_size=16)):
        def grouped(frames, expressions):
            vectors = {f: e.as_vector() for (_, f), e in zip(frames, expressions)}
            return {s: np.stack([vectors[f] for f in ids]) for s, ids in session_segments(frames).items()}

        dome = grouped(plan.frames, plan.expressions)
        rows += list(session_difficulty(grouped(plan.headset.frames, plan.headset.expressions), dome).values())
        copied += list(session_difficulty(dome, dome).values())
    summary = summarise_difficulty(rows)
    assert summary["dome_frames_per_segment"] > 15
    assert summary["stretch_within_1"] < 0.3 and summary["stretch_rms"] > summary["mean_rms"]
    assert summarise_difficulty(copied)["stretch_exact"] == 1.0


def test_within_one_frame_is_measured_from_the_nearest_dome_frame():
    from ava.driver.truth import exact_frame, expression_distances, within_one_frame

    dome = np.array([[0.0], [0.2], [0.4], [0.6], [0.6], [0.6], [0.3]])  # rise, hold at 0.6, fall
    headset = np.array([[0.21], [0.6], [0.55], [0.05]])
    distances = expression_distances(headset, dome)
    assigned = np.array([3, 1, 6, 2])
    # 0.21: nearest is frame 1, frame 3 is two away. 0.6: a tie over the hold (3-5), frame 1 is not
    # in it and not next to it. 0.55: nearest 3, 4 and 5 alike; 6 is next to 5. 0.05: nearest 0.
    np.testing.assert_array_equal(within_one_frame(assigned, distances), [False, False, True, False])
    np.testing.assert_array_equal(within_one_frame(np.array([2, 5, 4, 1]), distances), [True, True, True, True])
    np.testing.assert_array_equal(exact_frame(np.array([1, 5, 4, 1]), distances), [True, True, True, False])


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
