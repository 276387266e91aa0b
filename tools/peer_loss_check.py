"""How long the other processes of a multi-process `ava train` take to stop when one is lost, on
the real backend (NCCL on GPUs; gloo with --device cpu), and whether torchrun's restart resumes.

Three scenarios on a tiny synthetic set and model, two processes:

1. `kill`: two processes started by hand (no torchrun agent to clean up); rank 1 gets SIGKILL
   after a few steps. Measured: the seconds until rank 0 exits, its status (75 expected) and its
   last line.
2. `hang`: the same with SIGSTOP instead (a hung process: only the heartbeat can tell).
3. `restart`: `torchrun --max-restarts 1` with rank 1 crashing at step 3 of the first attempt
   (AVA_CRASH_AT); expected: exit 0, steps 1..N logged once each, a resume from step 2.

Writes OUT/results.json (one entry per scenario; a scenario already there is skipped, so a second
call continues) and OUT/log.txt.

    python tools/peer_loss_check.py -o peer-loss                 # two GPUs (NCCL)
    python tools/peer_loss_check.py -o peer-loss --device cpu    # gloo, any machine
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY_MODEL = ["--model.uv-size", "64", "--model.prims-per-side", "8", "--model.voxels-per-prim", "8",
              "--model.warp-size", "8", "--model.raymarch-step", "8"]
TIMEOUT = 20  # AVA_PEER_TIMEOUT for these runs
STEPS = 6


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_argv(dataset: Path, run: Path, device: str, maxiter: int) -> list[str]:
    return ["train", "--train.dataset-dir", str(dataset), "--train.maxiter", str(maxiter), "--progress.output-path",
            str(run), "--train.nids", "2", "--train.batchsize", "1", "--train.downsample", "128",
            "--train.num-workers", "0", "--train.warmup-iters", "0", "--progress.checkpoint-freq", "2",
            "--progress.image-freq", "1000", "--progress.psnr-freq", "1000", "--progress.psnr-samples", "1",
            "--progress.no-cross-id", "--device", device, "--compile", "off", *TINY_MODEL]


def environment(**extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="400",
               OMP_NUM_THREADS="1", AVA_PEER_TIMEOUT=str(TIMEOUT))
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return {**env, **extra}


def steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum('"kind"' not in line for line in path.read_text().splitlines())


def lose_a_process(dataset: Path, run: Path, device: str, how: str) -> dict:
    port = free_port()
    processes = []
    for rank in range(2):
        env = environment(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                          LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
        processes.append(subprocess.Popen([sys.executable, "-m", "ava", *train_argv(dataset, run, device, 100_000)],
                                          cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          text=True))
    try:
        deadline = time.monotonic() + 420
        while steps_logged(run) < 3:
            if any(process.poll() is not None for process in processes) or time.monotonic() > deadline:
                return {"error": "the run did not start", "stderr": processes[0].stderr.read()[-2000:]}
            time.sleep(0.05)
        processes[1].send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        lost = time.monotonic()
        try:
            _, stderr = processes[0].communicate(timeout=max(120, 3 * TIMEOUT))
        except subprocess.TimeoutExpired:
            return {"scenario": how, "stopped": False, "waited_s": time.monotonic() - lost}
        waited = time.monotonic() - lost
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    last = [line for line in stderr.splitlines() if line.strip()][-1:] or [""]
    return {"scenario": how, "stopped": True, "waited_s": round(waited, 2), "status": processes[0].returncode,
            "last_line": last[0][:600], "steps_before": steps_logged(run), "peer_timeout_s": TIMEOUT}


def restart(dataset: Path, run: Path, device: str) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", "1", "-m", "ava", *train_argv(dataset, run, device, STEPS)]
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=environment(AVA_CRASH_AT="after-step:3@1"), capture_output=True,
                            text=True, timeout=480)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"kind"' not in line] if (run / "metrics.jsonl").is_file() else []
    resumed = [line for line in result.stderr.splitlines() if "resuming from" in line]
    return {"scenario": "restart", "status": result.returncode, "seconds": round(time.monotonic() - started, 1),
            "steps_logged": steps, "resumed": resumed[:1], "ok": result.returncode == 0
            and steps == list(range(1, STEPS + 1)) and bool(resumed),
            "stderr_tail": "" if result.returncode == 0 else result.stderr[-2000:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AVA_CACHE_DIR", str(out / "cache"))
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    def log(line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        print(stamped, flush=True)
        with open(out / "log.txt", "a") as handle:
            handle.write(stamped + "\n")

    from kill_campaign import tiny_dataset  # tools/ is this script's folder, first on sys.path

    dataset = tiny_dataset(out / "data", log)
    for scenario in ("kill", "hang", "restart"):
        if scenario in results:
            continue
        run = out / f"run-{scenario}"
        if run.exists():
            import shutil

            shutil.rmtree(run)
        log(f"scenario {scenario} ({args.device})")
        results[scenario] = restart(dataset, run, args.device) if scenario == "restart" else \
            lose_a_process(dataset, run, args.device, scenario)
        results[scenario]["device"] = args.device
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        log(json.dumps(results[scenario]))


if __name__ == "__main__":
    main()
