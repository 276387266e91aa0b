"""`ava train` end to end on a tiny synthetic set (CPU): outputs, resume, flags, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ava.cli import SUBCOMMANDS
from ava.cli import main as cli_main

# A tiny model and run: 8x8 primitives of 8^3 voxels on 64^2 UV maps, 32x20 images.
TINY_MODEL = ["--model.uv-size", "64", "--model.prims-per-side", "8", "--model.voxels-per-prim", "8",
              "--model.warp-size", "8", "--model.raymarch-step", "8"]


def run_cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    return exit_info.value.code


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    from ava.synth import generate
    from ava.synth.config import SynthConfig

    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(n_ids=2, n_frames=4, n_cams=3, texture_size=64, downsample=128, prims_per_side=8,
                               voxels=4, mesh_columns=16, mesh_rows=12, keypoints=False, workers=1), progress=False)
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def train_argv(dataset: Path, run: Path, maxiter: int, *extra: str) -> list[str]:
    return ["train", "--train.dataset-dir", str(dataset), "--train.maxiter", str(maxiter),
            "--progress.output-path", str(run), "--train.nids", "2", "--train.batchsize", "2", "--train.downsample", "128", "--train.num-workers", "0",
            "--train.warmup-iters", "2", "--train.num-holdout-cameras", "2", "--progress.checkpoint-freq", "2",
            "--progress.image-freq", "2", "--progress.psnr-freq", "4", "--progress.psnr-samples", "2",
            "--progress.cross-id-n-subjects", "1", "--device", "cpu", *TINY_MODEL, *extra]


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight_run(tiny_dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "straight"
    assert run_cli(train_argv(tiny_dataset, run, 4)) == 0
    return run


def test_short_run_writes_checkpoints_metrics_and_pictures(straight_run):
    from ava.checkpoint import load_checkpoint

    checkpoints = sorted(path.name for path in (straight_run / "checkpoints").glob("step_*.safetensors"))
    assert checkpoints == ["step_00000002.safetensors", "step_00000004.safetensors"]
    assert (straight_run / "checkpoints" / "latest").read_text().strip() == "step_00000004.safetensors"
    checkpoint = load_checkpoint(straight_run / "checkpoints" / "step_00000004.safetensors")
    assert checkpoint.step == 4 and len(checkpoint.identities) == 2 and checkpoint.optimizer_state is not None
    assert checkpoint.config["model"]["uv_size"] == 64 and checkpoint.scheduler_state["last_epoch"] == 4
    records = read_metrics(straight_run)
    steps = [record for record in records if record.get("kind") != "eval"]
    assert [record["step"] for record in steps] == [1, 2, 3, 4]
    for key in ("loss", "irgbl1", "vertl1", "kldiv", "primvolsum", "lr", "step_time", "samples_per_s"):
        assert all(isinstance(record[key], float) for record in steps), key
    assert [record["warmup"] for record in steps] == [True, True, False, False]
    evaluation = [record for record in records if record.get("kind") == "eval"]
    assert len(evaluation) == 1 and evaluation[0]["step"] == 4
    assert 0 < evaluation[0]["psnr_holdout"] < 100 and 0 < evaluation[0]["psnr_train"] < 100
    config = json.loads((straight_run / "config.json").read_text())
    assert config["train"]["maxiter"] == 4 and len(config["resolved"]["holdout_cameras"]) == 2
    assert sorted(path.name for path in (straight_run / "progress").glob("*.png")) == [
        "step_00000002.png", "step_00000004.png"]
    assert len(list((straight_run / "x-id").glob("*.png"))) == 2


def test_resume_continues_where_it_stopped(tiny_dataset, straight_run, tmp_path):
    """2 steps, then --resume auto to 4, must equal 4 steps in one go: same weights, optimiser
    state, schedule and metrics (data order and latent noise are restored too)."""
    from ava.checkpoint import load_checkpoint

    run = tmp_path / "resumed"
    assert run_cli(train_argv(tiny_dataset, run, 2)) == 0
    assert run_cli(train_argv(tiny_dataset, run, 4, "--resume", "auto")) == 0
    steps = [record for record in read_metrics(run) if record.get("kind") != "eval"]
    assert [record["step"] for record in steps] == [1, 2, 3, 4]
    straight = load_checkpoint(straight_run / "checkpoints" / "step_00000004.safetensors")
    resumed = load_checkpoint(run / "checkpoints" / "step_00000004.safetensors")
    assert resumed.step == 4
    for key, value in straight.model_state.items():
        torch.testing.assert_close(resumed.model_state[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert straight.optimizer_state["state"].keys() == resumed.optimizer_state["state"].keys()
    for index, state in straight.optimizer_state["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(resumed.optimizer_state["state"][index][name], value, rtol=1e-5, atol=1e-7)
    assert resumed.scheduler_state == straight.scheduler_state
    straight_losses = [r["loss"] for r in read_metrics(straight_run) if r.get("kind") != "eval"]
    assert [r["loss"] for r in steps] == pytest.approx(straight_losses, rel=1e-5)


def test_sync_free_steps_train_exactly_like_eager_steps(tiny_dataset, tmp_path):
    """--train.step-mode sync-free (what the GPU's captured step runs, here without the capture)
    with losses read back every 3 steps: the same records (warm-up steps included) and bit-equal
    weights and optimiser state as the eager run."""
    from ava.checkpoint import load_checkpoint

    # One thread each: with several, some CPU reductions add in an order that varies between runs.
    runs = {mode: tmp_path / mode for mode in ("eager", "sync-free")}
    for mode, run in runs.items():
        assert run_cli(train_argv(tiny_dataset, run, 4, "--train.step-mode", mode, "--train.readback-every", "3",
                                  "--threads", "1")) == 0
    records = [record for record in read_metrics(runs["sync-free"]) if record.get("kind") != "eval"]
    expected = [record for record in read_metrics(runs["eager"]) if record.get("kind") != "eval"]
    for key in ("step", "epoch", "loss", "irgbl1", "vertl1", "kldiv", "primvolsum", "lr", "grad_norm", "warmup"):
        assert [record[key] for record in records] == [record[key] for record in expected], key
    assert [record["warmup"] for record in records] == [True, True, False, False]
    assert all(record["step_time"] > 0 and record["data_time"] >= 0 for record in records)
    straight = load_checkpoint(runs["eager"] / "checkpoints" / "step_00000004.safetensors")
    free = load_checkpoint(runs["sync-free"] / "checkpoints" / "step_00000004.safetensors")
    for key, value in straight.model_state.items():
        assert torch.equal(free.model_state[key], value), key
    for index, state in straight.optimizer_state["state"].items():
        for name, value in state.items():
            assert torch.equal(free.optimizer_state["state"][index][name], value), (index, name)


def test_resume_from_another_configuration_is_refused(tiny_dataset, straight_run, tmp_path, capsys):
    checkpoint = straight_run / "checkpoints" / "step_00000004.safetensors"
    argv = train_argv(tiny_dataset, tmp_path / "other", 6, "--resume", str(checkpoint))
    argv[argv.index("--model.prims-per-side") + 1] = "16"
    argv[argv.index("--model.voxels-per-prim") + 1] = "4"
    assert run_cli(argv) == 2
    message = capsys.readouterr().err
    assert "another configuration" in message and "prims_per_side" in message


def test_bad_input_gets_one_line_and_status_2(tiny_dataset, tmp_path, capsys):
    assert run_cli(train_argv(tmp_path / "missing", tmp_path / "run", 1)) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_cli(train_argv(tiny_dataset, tmp_path / "run", 1, "--train.ids", "NOPE123")) == 2
    assert "unknown capture ids" in capsys.readouterr().err
    assert run_cli(train_argv(tiny_dataset, tmp_path / "run", 1, "--train.nids", "3")) == 2
    assert "lists only 2 captures" in capsys.readouterr().err
    assert run_cli(train_argv(tiny_dataset, tmp_path / "run", 1, "--train.batchsize", "500")) == 2
    assert "do not fill one batch" in capsys.readouterr().err
    assert run_cli(train_argv(tiny_dataset, tmp_path / "run", 1, "--train.holdout-cameras", "999999")) == 2
    assert "in none of the selected captures" in capsys.readouterr().err


def test_skipped_cameras_are_reported_and_cameras_can_be_selected(tiny_dataset, tmp_path, capsys):
    import shutil

    from ava.data.ids import read_ids_csv
    from ava.data.layout import CaptureLayout
    from ava.train.data import capture_cameras

    dataset = tmp_path / "set"
    shutil.copytree(tiny_dataset, dataset)
    captures = read_ids_csv(dataset / "ids.csv")
    per_capture = capture_cameras(dataset, captures)
    assert per_capture[0] == per_capture[1] and len(per_capture[0]) == 3  # synthetic captures share the dome's ids
    # The second camera's archive is damaged in every capture: it has no usable data at all.
    bad_camera = per_capture[0][1]
    damaged = [CaptureLayout(dataset / capture.folder).image_zip(bad_camera) for capture in captures]
    for path in damaged:
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    holdout = ["--train.holdout-cameras", per_capture[1][0]]
    assert run_cli(train_argv(dataset, tmp_path / "run", 1, *holdout)) == 0
    err = capsys.readouterr().err
    assert f"{damaged[0]}: archive cannot be opened" in err and f"camera {bad_camera} skipped" in err
    assert "training on 1 of 3 cameras, 1 held out" in err and f"1 without usable data ({bad_camera})" in err
    chosen = [camera for camera in per_capture[0] if camera != bad_camera]
    assert run_cli(train_argv(dataset, tmp_path / "chosen", 1, *holdout, "--train.cameras", *chosen)) == 0
    err = capsys.readouterr().err
    assert "warning" not in err and "training on 1 of 2 cameras, 1 held out" in err
    config = json.loads((tmp_path / "chosen" / "config.json").read_text())
    assert config["resolved"]["cameras"] == sorted(chosen) and config["train"]["cameras"] == chosen


@pytest.mark.parametrize("name", ["--help"] + sorted(SUBCOMMANDS))
def test_help_for_every_subcommand(name, capsys):
    argv = ["--help"] if name == "--help" else [name, "--help"]
    assert run_cli(argv) == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_presets_and_flag_overrides_reach_the_config(monkeypatch):
    import ava.train.loop

    seen = []
    monkeypatch.setattr(ava.train.loop, "train", lambda config: seen.append(config) or 0)
    assert run_cli(["train"]) == 0
    assert run_cli(["train", "--train.maxiter", "7", "--train.dataset_dir", "/data", "--train.init-learning-rate",
                    "0.5", "--progress.output-path", "elsewhere", "--train.losses.vertl1", "0.25"]) == 0
    assert run_cli(["train", "ava256", "--train.nids", "2", "--model.uv-size", "512",
                    "--model.prims-per-side", "64"]) == 0
    demo, overridden, original = seen
    assert demo.model.uv_size == 128 and demo.train.dataset_dir is None and demo.train.downsample == 64
    assert overridden.train.maxiter == 7 and str(overridden.train.dataset_dir) == "/data"
    assert overridden.train.init_learning_rate == 0.5 and str(overridden.progress.output_path) == "elsewhere"
    assert overridden.train.losses.vertl1 == 0.25 and overridden.model.uv_size == 128  # the rest stays demo
    assert original.train.nids == 2 and original.train.downsample == 8 and original.train.gamma == 1.4
    assert original.model.uv_size == 512 and original.model.prims_per_side == 64
    assert original.train.losses.kldiv == 1e-3 and original.train.init_learning_rate == 2e-4
