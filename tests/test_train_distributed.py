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
