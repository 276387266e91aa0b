"""CPU threads for torch on a shared machine: the demo's training step and `ava render`, with a
given number of threads, on an idle machine and with busy processes competing for the cores.

    python tools/bench_threads.py [--threads 1,2] [--load 0,2] [--steps 8] [--cache DIR]

Each measurement is a fresh `python -m ava` process (as a user runs it) with `--threads N`:
training reports the median of its metrics' step_time over steps 2..steps (step 1 warms up);
render reports the command's wall-clock time (start-up included) for the demo's default render
(every frame of the driver from one camera). `--load K` starts K processes spinning in a Python
loop for the duration of the measurements, standing in for other users' jobs. The demo data are
generated first (once per cache folder) and a 1-step run gives the checkpoint to render.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BURNER = "while True:\n    pass\n"


def _ava(argv: list[str], env: dict) -> float:
    """Runs `python -m ava ARGV`; returns its wall-clock seconds (raises if it fails)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ava", *argv], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ava {' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def _train(out: Path, steps: int, threads: int, env: dict) -> tuple[float, float]:
    """(median s/step over steps 2..steps, wall-clock seconds)."""
    wall = _ava(["train", "--train.maxiter", str(steps), "--progress.output-path", str(out), "--threads",
                 str(threads)], env)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [record["step_time"] for record in records if record.get("kind") != "eval" and record["step"] >= 2]
    return statistics.median(times), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="thread counts to compare (comma-separated)")
    parser.add_argument("--load", default="0,2", help="numbers of busy processes to run beside (comma-separated)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per measurement")
    parser.add_argument("--cache", type=Path, default=None, help="AVA_CACHE_DIR for the demo data (default: temp)")
    args = parser.parse_args()
    threads = [int(item) for item in args.threads.split(",")]
    loads = [int(item) for item in args.load.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bench_threads_"))
    env = dict(os.environ, AVA_CACHE_DIR=str(args.cache or work / "cache"))
    print(f"preparing the demo data and a checkpoint in {work} ...", file=sys.stderr)
    _ava(["train", "--train.maxiter", "1", "--progress.output-path", str(work / "prep")], env)
    checkpoint = work / "prep" / "checkpoints" / "step_00000001.safetensors"

    rows = []
    for load in loads:
        burners = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(load)]
        try:
            time.sleep(2.0 if load else 0.0)
            for count in threads:
                before = os.getloadavg()[0]
                step, wall = _train(work / f"train_t{count}_l{load}", args.steps, count, env)
                render = _ava(["render", "--checkpoint", str(checkpoint), "-o", str(work / f"viz_t{count}_l{load}"),
                               "--threads", str(count)], env)
                rows.append((load, count, step, wall, render, before))
                print(f"load {load}, threads {count}: {step:.2f} s/step, train wall {wall:.1f} s, "
                      f"render {render:.1f} s (load average before: {before:.1f})", file=sys.stderr)
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()

    print(f"\n{args.steps}-step demo runs (median s/step of steps 2..{args.steps}), `ava render` wall clock\n")
    print("| busy processes | --threads | s/step | train wall s | render wall s | load avg before |")
    print("|---:|---:|---:|---:|---:|---:|")
    for load, count, step, wall, render, before in rows:
        print(f"| {load} | {count} | {step:.2f} | {wall:.1f} | {render:.1f} | {before:.1f} |")


if __name__ == "__main__":
    main()
