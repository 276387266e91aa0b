"""The headset driver learns: on a tiny synthetic set, a driver beats the mean code on the frames of
a subject it never saw, by a stated margin (CPU, a few minutes on 2 cores).

The set: 4 subjects of one face shape and colouring (--identity-variation 0; rig fit, slip, IR
reflectance and every performance still differ), 60 dome frames each, 16x16 headset views; a
decoder trained 2 steps (its expression codes are a fixed function of mesh and texture, which is
all a driver needs). The driver is trained on the true codes of 3 subjects' headset frames (the
regression the alignment feeds, without the alignment's errors) with neutral-frame conditioning,
and measured on the 4th subject: measured at 0.505 of the mean code's code error and +2.71 dB
(2026-12-07, this configuration, 600 driver steps; at 300 steps 0.81 and +0.85 dB once the
synthetic renderer stopped culling primitives that cross a headset camera's plane, which made the
mouth views brighter); the test asks for at most 0.75 and at least +1 dB.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_train import TINY_MODEL, run_cli


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def test_a_driver_beats_the_mean_code_on_an_unseen_subject(tmp_path):
    from ava.synth import SynthConfig, generate

    data = tmp_path / "data"
    generate(data, SynthConfig(n_ids=4, n_frames=60, n_cams=1, texture_size=64, downsample=128, prims_per_side=8,
                               voxels=4, mesh_columns=16, mesh_rows=12, keypoints=False, workers=1, headset_size=16,
                               identity_variation=0.0), progress=False)
    decoder = tmp_path / "decoder"
    assert run_cli(["train", "--train.dataset-dir", str(data), "--train.maxiter", "2", "--train.nids", "4",
                    "--progress.output-path", str(decoder), "--train.batchsize", "2", "--train.downsample", "128",
                    "--train.num-workers", "0", "--train.warmup-iters", "1", "--progress.checkpoint-freq", "2",
                    "--progress.psnr-freq", "100", "--progress.image-freq", "100", "--device", "cpu",
                    *TINY_MODEL]) == 0
    checkpoint = decoder / "checkpoints" / "step_00000002.safetensors"
    driver = tmp_path / "driver"
    assert run_cli(["train-driver", "--checkpoint", str(checkpoint), "--train.dataset-dir", str(data),
                    "--train.targets", "truth", "--encoder.neutral", "--train.maxiter", "600",
                    "--train.num-holdout-subjects", "1", "--progress.output-path", str(driver),
                    "--progress.eval-freq", "600", "--progress.image-freq", "600", "--progress.checkpoint-freq", "600",
                    "--encoder.image-size", "16", "--encoder.channels", "16", "32", "--encoder.hidden", "64",
                    "--train.batchsize", "16", "--device", "cpu"]) == 0
    evaluation = tmp_path / "eval"
    assert run_cli(["eval-driver", "--driver-checkpoint", str(driver / "checkpoints" / "step_00000600.safetensors"),
                    "-o", str(evaluation), "--device", "cpu", "--strip-frames", "0"]) == 0
    document = json.loads((evaluation / "eval.json").read_text())
    assert document["held_out"] is True
    total = document["rows"][-1]
    assert total["frames"] > 40
    assert total["code_mse_driver"] < 0.75 * total["code_mse_mean"], total
    assert total["psnr_gain"] > 1.0, total
    assert Path(document["driver"]).is_file()
