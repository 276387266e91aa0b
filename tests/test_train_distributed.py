"""`ava train` under torchrun on the CPU (gloo over loopback): one node with two processes, and
two "nodes" of one process each that meet through a c10d rendezvous, the multi-node recipe of
the README. Both must finish, exactly one process writes the run folder, with the latent noise
off two processes of batch B give the losses and weights of one process of batch 2B, and ava's
DDP plan (ava.train.ddp) trains exactly like DDP's conservative settings.

Slow: every torchrun launch starts fresh Python processes that import torch (~15 s each here).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from ddp_worker import noise_free  # noqa: E402
from test_train import TINY_MODEL, read_metrics, run_cli, tiny_dataset  # noqa: E402,F401 (fixture)

WORKER = Path(__file__).parent / "ddp_worker.py"
STEPS = 2
PER_RANK_BATCH = 1


def distributed_argv(dataset: Path, run: Path, batchsize: int) -> list[str]:
    # No held-out cameras, one PSNR sample and no cross-identity strip: the end-of-run evaluation
    # would otherwise cost more than the training steps.
    return ["train", "--train.dataset-dir", str(dataset), "--train.maxiter", str(STEPS),
            "--progress.output-path", str(run), "--train.nids", "2", "--train.batchsize", str(batchsize),
            "--train.downsample", "128", "--train.num-workers", "0", "--train.warmup-iters", "0",
            "--progress.psnr-samples", "1", "--progress.no-cross-id", "--device", "cpu", *TINY_MODEL]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_environment() -> dict[str, str]:
    environment = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", COLUMNS="200")
    source_root = str(Path(__file__).parents[1])
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, environment.get("PYTHONPATH")]))
    return environment


def launch(commands: list[list[str]], timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Starts every command at once (the nodes must meet) and waits for all of them."""
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=torchrun_environment()) for command in commands]
    results = []
    try:
        for command, process in zip(commands, processes):
            stdout, stderr = process.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def torchrun(*options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *options]


@pytest.fixture(scope="module")
def single_process_run(tiny_dataset, tmp_path_factory) -> Path:
    """One process with the global batch of the distributed runs, noise off (in this process)."""
    from ava.nn.bottleneck import VAEBottleneck

    run = tmp_path_factory.mktemp("single") / "run"
    patch = pytest.MonkeyPatch()
    patch.setattr(VAEBottleneck, "forward", noise_free(VAEBottleneck.forward))
    try:
        assert run_cli(distributed_argv(tiny_dataset, run, 2 * PER_RANK_BATCH)) == 0
    finally:
        patch.undo()
    return run


def check_same_training(distributed: Path, single: Path) -> None:
    from ava.checkpoint import load_checkpoint

    steps = [record for record in read_metrics(distributed) if record.get("kind") != "eval"]
    reference = [record for record in read_metrics(single) if record.get("kind") != "eval"]
    assert [record["step"] for record in steps] == list(range(1, STEPS + 1))
    assert all(math.isfinite(record["loss"]) for record in steps)
    for name in ("loss", "irgbl1", "vertl1", "kldiv", "primvolsum", "grad_norm"):
        assert [record[name] for record in steps] == pytest.approx([record[name] for record in reference],
                                                                   rel=1e-4, abs=1e-6), name
    final = f"checkpoints/step_{STEPS:08d}.safetensors"
    ours, theirs = load_checkpoint(distributed / final), load_checkpoint(single / final)
    for key, value in theirs.model_state.items():
        torch.testing.assert_close(ours.model_state[key], value, rtol=1e-4, atol=1e-5, msg=key)
    config = json.loads((distributed / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2 and config["train"]["batchsize"] == PER_RANK_BATCH


@pytest.mark.slow
def test_ddp_plan_trains_like_torchs_conservative_settings(tiny_dataset, tmp_path):
    """One node, two processes, a warm-up step then a normal one: ava's DDP plan (unused parameters
    frozen, no search for them, only the written buffer broadcast) must give the weights of DDP
    with find_unused_parameters and every buffer broadcast. Rank 1's running primitive scale
    differs from rank 0's after the warm-up step, so a missing broadcast would show."""
    from ava.checkpoint import load_checkpoint

    runs = {}
    for mode in ("plan", "reference"):
        runs[mode] = tmp_path / mode
        options = ["--reference-ddp"] if mode == "reference" else []
        [result] = launch([torchrun("--standalone", "--nproc-per-node", "2", str(WORKER), *options,
                                    *distributed_argv(tiny_dataset, runs[mode], PER_RANK_BATCH),
                                    "--train.warmup-iters", "1")])
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stderr.count("done: step") == 1  # only rank 0 speaks
    plan = json.loads((runs["plan"] / "config.json").read_text())["resolved"]["ddp"]
    assert plan["frozen"] and not plan["find_unused_parameters"]
    assert plan["synced_buffers"] == ["decoder_assembler.adaptwarps"]
    steps = {mode: [record for record in read_metrics(run) if record.get("kind") != "eval"] for mode, run in runs.items()}
    assert [record["warmup"] for record in steps["plan"]] == [True, False]
    assert [record["loss"] for record in steps["plan"]] == pytest.approx([r["loss"] for r in steps["reference"]],
                                                                        rel=1e-5)
    final = f"checkpoints/step_{STEPS:08d}.safetensors"
    ours, theirs = (load_checkpoint(runs[mode] / final).model_state for mode in ("plan", "reference"))
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_two_nodes_meet_by_c10d_rendezvous_and_one_writes(tiny_dataset, single_process_run, tmp_path):
    """The README's multi-node command on one host: two torchrun agents, one process each.

    Each node is given its own output folder so the test can tell which one wrote; the
    rendezvous, not the launch order, decides which node hosts rank 0."""
    endpoint = f"127.0.0.1:{free_port()}"
    commands = [torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                         "--rdzv-endpoint", endpoint, "--rdzv-id", "ava-test", "--local-addr", "127.0.0.1",
                         str(WORKER), "--no-latent-noise", *distributed_argv(tiny_dataset, tmp_path / f"node{node}" / "run",
                                                        PER_RANK_BATCH))
                for node in range(2)]
    results = launch(commands)
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    written = [node for node in range(2) if (tmp_path / f"node{node}" / "run").exists()]
    assert len(written) == 1, written
    check_same_training(tmp_path / f"node{written[0]}" / "run", single_process_run)


# --- a process of the run dies or hangs (issue 24) ----------------------------------------------

def test_the_watchdog_stops_the_others_when_a_process_hangs_fails_or_finishes():
    """In-process, with a real rendezvous store: a process whose heartbeat stops (hung, or killed
    with its agent) is declared lost after the timeout; one that fails is named at once; one that
    finishes is not waited for."""
    import datetime
    import threading
    import time

    import torch.distributed as dist

    from ava.train.watchdog import PEER_LOST, Watchdog

    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                           timeout=datetime.timedelta(seconds=10))
    for case in ("hangs", "fails", "finishes"):
        exits, lines = [], []
        stopped = threading.Event()

        def exit_(status):
            exits.append((status, time.monotonic()))
            stopped.set()

        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MASTER_ADDR", "127.0.0.1")
            patch.setenv("MASTER_PORT", str(port))
            patch.setenv("TORCHELASTIC_RUN_ID", case)
            watching = Watchdog(0, 2, report=lines.append, timeout=3.0, exit=exit_).start()
            watched = Watchdog(1, 2, report=lines.append, timeout=3.0, exit=lambda status: None).start()
        time.sleep(1.5)  # both beating
        began = time.monotonic()
        if case == "hangs":
            watched._stop.set()  # its heartbeat thread stops, as in a hung or killed process
        elif case == "fails":
            watched.failed(RuntimeError("CUDA out of memory on rank 1"))
        else:
            watched.done()
        stopped.wait(8.0)
        watching.done()
        if case == "finishes":
            assert not exits and not lines
            continue
        assert [status for status, _ in exits] == [PEER_LOST], case
        waited = exits[0][1] - began
        if case == "hangs":
            # Lost `timeout` after the last beat seen, which came up to one interval (0.6 s) before
            # the hang; noticed at the next look, up to one interval later (plus a busy machine's lag).
            assert "rank 1 has sent no heartbeat for" in lines[0] and 3.0 - 0.6 <= waited <= 3.0 * 1.2 + 0.5, waited
        else:
            assert "rank 1 failed (CUDA out of memory on rank 1)" in lines[0] and waited <= 0.6 + 0.5, waited
    del server


@pytest.mark.slow
def test_a_killed_process_stops_the_other_with_one_line(tiny_dataset, tmp_path):
    """Two processes started by hand (no torchrun agent to clean up): kill -9 one in the middle of
    training; the other stops within the documented time with one line and status PEER_LOST."""
    import signal
    import time

    from ava.train.watchdog import PEER_LOST

    run = tmp_path / "run"
    argv = distributed_argv(tiny_dataset, run, PER_RANK_BATCH)
    argv[argv.index("--train.maxiter") + 1] = "1000"
    port = free_port()
    processes = []
    for rank in range(2):
        env = dict(torchrun_environment(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                   RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2", AVA_PEER_TIMEOUT="10")
        processes.append(subprocess.Popen([sys.executable, "-m", "ava", *argv, "--progress.checkpoint-freq", "2"],
                                          stderr=subprocess.PIPE, text=True, env=env))
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "latest").is_file():
            ended = [process for process in processes if process.poll() is not None]
            assert not ended and time.monotonic() < deadline, ended[0].stderr.read()[-3000:] if ended else "too slow"
            time.sleep(0.1)
        processes[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = processes[0].communicate(timeout=60)
        waited = time.monotonic() - killed
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    assert processes[0].returncode == PEER_LOST, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if "lost another process of the run" in line]
    assert len(lines) == 1 and lines[0].startswith("rank 0: ") and "--resume auto" in lines[0], stderr[-3000:]
    assert "Traceback" not in stderr
    assert waited < 10 * 1.2 + 5, waited


@pytest.mark.slow
def test_torchrun_restarts_a_crashed_run_from_its_last_checkpoint(tiny_dataset, tmp_path):
    """Rank 1 dies at step 3 (AVA_CRASH_AT, first attempt only); torchrun --max-restarts 1 starts
    both again, they resume from step 2 and finish: the losses and weights of one process of the
    global batch (latent noise off), as if nothing had happened."""
    from ava.faults import CRASH_ENV
    from ava.nn.bottleneck import VAEBottleneck

    steps = 4
    reference = tmp_path / "single"
    argv = distributed_argv(tiny_dataset, reference, 2 * PER_RANK_BATCH)
    argv[argv.index("--train.maxiter") + 1] = str(steps)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(VAEBottleneck, "forward", noise_free(VAEBottleneck.forward))
        assert run_cli(argv + ["--progress.checkpoint-freq", "2"]) == 0
    run = tmp_path / "restarted"
    argv = distributed_argv(tiny_dataset, run, PER_RANK_BATCH)
    argv[argv.index("--train.maxiter") + 1] = str(steps)
    command = torchrun("--standalone", "--nproc-per-node", "2", "--max-restarts", "1", str(WORKER),
                       "--no-latent-noise", *argv, "--progress.checkpoint-freq", "2")
    process = subprocess.run(command, capture_output=True, text=True, timeout=600,
                             env=dict(torchrun_environment(), **{CRASH_ENV: "after-step:3@1"}))
    assert process.returncode == 0, process.stderr[-3000:]
    assert "continuing with --resume auto" in process.stderr and "resuming from" in process.stderr
    assert [r["step"] for r in read_metrics(run) if r.get("kind") != "eval"] == list(range(1, steps + 1))
    from ava.checkpoint import load_checkpoint

    reference_losses = [r["loss"] for r in read_metrics(reference) if r.get("kind") != "eval"]
    assert [r["loss"] for r in read_metrics(run) if r.get("kind") != "eval"] == pytest.approx(reference_losses,
                                                                                               rel=1e-4)
    final = f"checkpoints/step_{steps:08d}.safetensors"
    ours, theirs = load_checkpoint(run / final), load_checkpoint(reference / final)
    for key, value in theirs.model_state.items():
        torch.testing.assert_close(ours.model_state[key], value, rtol=1e-4, atol=1e-5, msg=key)
