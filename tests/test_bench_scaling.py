"""tools/bench_scaling.py: run plan, argument checks, metrics summary, table, curve comparison and
plot on made-up metrics, the replicated data set, and one tiny run on the CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).parent))

import bench_scaling  # noqa: E402
from bench_scaling import (RunSpec, add_efficiency, compare_curves, format_table, parse_args, plan_runs,  # noqa: E402
                           read_steps, replicate, summarise)
from test_train import TINY_MODEL, tiny_dataset  # noqa: E402,F401 (fixture)


def test_runs_scale_the_gpu_count_then_match_the_largest_global_batch_on_one():
    assert [(run.nproc, run.batch) for run in plan_runs(2, 4)] == [(1, 4), (2, 4), (1, 8)]
    assert [(run.nproc, run.batch) for run in plan_runs(4, 2, [4, 1, 2])] == [(1, 2), (2, 2), (4, 2), (1, 8)]
    assert [(run.nproc, run.batch) for run in plan_runs(1, 4)] == [(1, 4)]
    assert [(run.nproc, run.batch) for run in plan_runs(2, 4, same_global_batch=False)] == [(1, 4), (2, 4)]
    with_buckets = plan_runs(2, 4, bucket_sizes=[10, 100])
    assert [(run.name, run.nproc, run.bucket_mb) for run in with_buckets[3:]] == [
        ("2x4-bucket10", 2, 10), ("2x4-bucket100", 2, 100)]
    with pytest.raises(ValueError, match="must lie in"):
        plan_runs(2, 4, [1, 3])


def test_arguments_are_checked_and_train_flags_pass_through(capsys):
    args = parse_args(["--device", "cpu", "--nproc", "2", "--steps", "10", "--skip", "2", "--",
                       "--model.uv-size", "64"])
    assert args.extra == ["--model.uv-size", "64"] and [run.name for run in args.runs] == ["1x4", "2x4", "1x8"]
    assert args.replicas == 16
    command = bench_scaling.train_command(RunSpec("2x4-bucket10", 2, 4, 10.0), args, Path("/d"), 3, Path("/r"))
    assert command[command.index("--nproc-per-node") + 1] == "2" and command[-2:] == ["--model.uv-size", "64"]
    for flag, value in (("--train.ddp-bucket-mb", "10"), ("--train.batchsize", "4"), ("--train.nids", "3"),
                        ("--train.maxiter", "10"), ("--device", "cpu"), ("--train.dataset-dir", "/d")):
        assert command[command.index(flag) + 1] == value, flag
    for argv, message in ((["--device", "cpu"], "--nproc is required"),
                          (["--device", "cpu", "--nproc", "2", "--steps", "10", "--skip", "10"], "leaves none"),
                          (["--device", "cpu", "--nproc", "2", "--counts", "3"], "must lie in"),
                          (["--device", "cpu", "--nproc", "0"], "at least 1"),
                          (["--device", "cpu", "--nproc", "2", "--synth-ids", "1"], "two different captures"),
                          (["--device", "cpu", "--nproc", "2", "--bucket-mb", "0"], "must be positive")):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err


def made_up_run(path: Path, step_time: float, losses: list[float], warmup: int, utilisation=None) -> Path:
    lines = []
    for step, loss in enumerate(losses, start=1):
        record = {"step": step, "loss": loss, "step_time": step_time, "data_time": 0.002, "warmup": step <= warmup}
        if utilisation is not None and step % 10 == 0:
            record["gpu_utilisation"] = utilisation
        lines.append(json.dumps(record))
        if step == 5:
            lines.append(json.dumps({"step": 5, "kind": "eval", "psnr_train": 20.0}))
    path.write_text("\n".join(lines) + '\n{"step": 99, "loss": 1')  # a torn last line is ignored
    return path


def test_summary_table_and_curve_comparison(tmp_path):
    losses = [30.0 - step * 0.1 for step in range(40)]
    one = summarise(RunSpec("1x4", 1, 4), read_steps(made_up_run(tmp_path / "a", 0.100, losses, 10, 90.0)), skip=20)
    two = summarise(RunSpec("2x4", 2, 4), read_steps(made_up_run(tmp_path / "b", 0.110, losses, 10, 80.0)), skip=20)
    same = summarise(RunSpec("1x8", 1, 8), read_steps(made_up_run(tmp_path / "c", 0.190, losses, 10)), skip=20)
    assert one.steps == 40 and one.timed_steps == 20 and one.warmup_steps == 10
    assert one.samples_per_s == pytest.approx(40.0) and two.samples_per_s == pytest.approx(8 / 0.11)
    assert one.step_ms == pytest.approx(100.0) and one.data_ms == pytest.approx(2.0)
    assert one.gpu_utilisation == 90.0 and same.gpu_utilisation is None
    assert one.loss_end == pytest.approx(sum(losses[-4:]) / 4)
    add_efficiency([one, two, same])
    assert one.efficiency == pytest.approx(1.0) and two.efficiency == pytest.approx(40 / 0.11 / 400)
    assert same.efficiency == pytest.approx(1.0)  # its own 1-GPU baseline
    table = format_table([one, two, same]).splitlines()
    assert len(table) == 5 and table[0].startswith("| GPUs")
    assert table[3].split("|")[1:7] == [" 2 ", " 4 ", " 8 ", " 25 MB ", " 72.7 ", " 91% "]
    assert table[4].split("|")[4] == " — " and table[4].split("|")[9] == " — "  # 1 GPU: no buckets; no NVML
    comparison = compare_curves(same, two)
    assert comparison["mean_abs_difference"] == 0 and comparison["from_step"] == 11 and comparison["steps"] == 30
    shifted = summarise(RunSpec("2x4", 2, 4), read_steps(made_up_run(tmp_path / "d", 0.11, [x + 1 for x in losses], 10)),
                        skip=20)
    assert compare_curves(same, shifted)["mean_abs_difference"] == pytest.approx(1.0)
    pytest.importorskip("matplotlib")
    assert bench_scaling.plot_curves([one, two, same], tmp_path / "plot.png").stat().st_size > 1000


def test_replicas_list_every_capture_again_under_new_ids(tiny_dataset, tmp_path):
    from ava.data.ids import read_ids_csv

    originals = read_ids_csv(tiny_dataset / "ids.csv")
    assert replicate(tiny_dataset, tmp_path / "r", 3) == 3 * len(originals)
    copies = read_ids_csv(tmp_path / "r" / "ids.csv")
    assert [capture.sid for capture in copies] == [f"RPL{index:03d}" for index in range(3 * len(originals))]
    for index, copy in enumerate(copies):
        original = originals[index % len(originals)]
        assert (tmp_path / "r" / copy.folder).resolve() == (tiny_dataset / original.folder).resolve()
    assert replicate(tiny_dataset, tmp_path / "r", 1) == len(originals)  # a rerun replaces the links
    assert len([path for path in (tmp_path / "r").iterdir() if path.is_dir()]) == len(originals)


@pytest.mark.slow
def test_a_tiny_cpu_run_end_to_end(tiny_dataset, tmp_path, capsys):
    """One process on the CPU through torchrun (about 15 s): the table and summary come out."""
    replicate(tiny_dataset, tmp_path / "data", 2)
    status = bench_scaling.main(["--device", "cpu", "--nproc", "1", "--per-gpu-batch", "2", "--steps", "3",
                                 "--warmup-iters", "1", "--skip", "1", "--data", str(tmp_path / "data"),
                                 "--out", str(tmp_path / "out"),
                                 "--", "--train.downsample", "128", "--train.num-workers", "0", *TINY_MODEL])
    out = capsys.readouterr().out
    assert status == 0, out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    [run] = summary["runs"]
    assert run["steps"] == 3 and run["timed_steps"] == 2 and run["efficiency"] == pytest.approx(1.0)
    assert run["spec"] == {"name": "1x2", "nproc": 1, "batch": 2, "bucket_mb": None} and run["num_workers"] == 0
    assert "| 1 | 2 | 2 |" in out and "100%" in out
    assert (tmp_path / "out" / "1x2" / "metrics.jsonl").is_file() and (tmp_path / "out" / "1x2.log").is_file()
    assert not (tmp_path / "out" / "1x2" / "checkpoints").exists()  # stopped once its last step was logged


def test_stop_ends_the_workers_torchrun_starts_in_sessions_of_their_own():
    import os
    import subprocess
    import time

    spawn_worker = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; "
                    "time.sleep(60)'], start_new_session=True); print('started', flush=True); time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", spawn_worker], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "started"
    tree = bench_scaling.process_tree(process.pid)
    assert len(tree) == 2 and tree[-1] == process.pid  # the worker first
    bench_scaling.stop(process)

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
        except OSError:
            return True

    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(pid) for pid in tree)
    assert process.returncode == -9 and os.getpid() not in tree
