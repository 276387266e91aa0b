"""The original ava-256 code's own data setup runs on `ava synth` output.

Needs a checkout of facebookresearch/ava-256 named by $AVA_ORIGINAL_CHECKOUT and the original's
Python dependencies (the skip message lists the missing ones with the pip command); skipped
otherwise. Nothing of the original is copied: tools/check_original_data.py imports its training
script from the checkout, in a subprocess, and calls its `prepare()` (training dataset, neutral
conditioning, the cross-identity driver dataset on its four frontal cameras).

    AVA_ORIGINAL_CHECKOUT=~/ava-256 python -m pytest -q tests/test_original_compat.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ava.data.dataset import MultiCaptureDataset
from ava.data.ids import read_ids_csv
from ava.synth import SynthConfig, generate
from ava.synth.dome import FRONTAL_CAMERA_IDS
from tests.conftest import require_original_checkout

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture(scope="module")
def checkout() -> Path:
    return require_original_checkout()


def test_the_original_builds_its_datasets_and_cross_identity_driver(checkout, tmp_path):
    dataset_dir = tmp_path / "synth"
    generate(dataset_dir, SynthConfig(n_ids=4, n_frames=3, n_cams=8, downsample=64, texture_size=64, prims_per_side=16,
                                      voxels=4, mesh_columns=24, mesh_rows=16, keypoints=False, workers=1),
             progress=False)
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(TOOLS / "check_original_data.py"), "--original", str(checkout), "--dataset",
         str(dataset_dir), "--downsample", "64", "--batchsize", "2", "--json", str(report_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(report_path.read_text())

    captures = read_ids_csv(dataset_dir / "ids.csv")
    ours = MultiCaptureDataset(dataset_dir, captures, downsample=64)
    assert report["frontal_cameras"] == list(FRONTAL_CAMERA_IDS)
    assert report["identities"] == 4 and report["neutral_conditioning"] == 4
    assert report["cameras"] == ours.camera_ids and report["samples"] == len(ours)
    per_capture = report["cameras_per_capture"]
    assert {folder: sorted(cameras) for folder, cameras in per_capture.items()} == {
        capture.folder: sorted(part.reader.camera_ids) for capture, part in zip(captures, ours.datasets)}
    assert any(len(cameras) < len(report["cameras"]) for cameras in per_capture.values())  # a capture misses some
    # The cross-identity driver: every capture keeps all four frontal cameras, in the script's order.
    assert all(cameras == list(FRONTAL_CAMERA_IDS) for cameras in report["driver_cameras_per_capture"].values())
    assert report["driver_samples"] == 4 * 3 * 4
    assert report["driver_camera"] in FRONTAL_CAMERA_IDS and 0 <= report["driver_identity"] < 4
    assert len(report["cross_id_subjects"]) == 3
    batch = report["batch"]
    assert batch["image"] == [2, 3, 64, 41] and batch["verts"] == [2, 24 * 17, 3] and batch["avgtex"] == [2, 3, 64, 64]
    # Its normalisation statistics are ava's (same formulas, same files).
    assert report["texstd"] == pytest.approx(ours.stats.texstd, rel=1e-5)
    assert report["vertstd"] == pytest.approx(ours.stats.vertstd, rel=1e-5)
