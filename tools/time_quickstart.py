"""The README's quick start as a new user meets it: `ava train` in an empty folder with an empty
cache (so the demo data are generated too), timed, with the machine's load beside it.

    python tools/time_quickstart.py OUT [-- EXTRA ava train FLAGS]

Runs `python -m ava train [EXTRA]` with OUT as the working directory and `AVA_CACHE_DIR=OUT/cache`
(OUT must not exist yet). It writes OUT/train.log (the command's stderr, each line stamped with
the seconds since the start) and OUT/result.json, and prints one summary:

- wall clock of the whole command, and its split: until `ava train` prints its "data: ..." line
  (data generated and read) and the rest (model set-up, steps, evaluations, checkpoints);
- the training steps' median and mean `step_time` from run/metrics.jsonl (steps 2..N);
- the last evaluation's PSNRs (psnr_holdout and the rest);
- the 1-minute load average when it started, its mean and maximum while it ran (sampled every
  5 s), and `uptime` before and after, since the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to create and run in")
    parser.add_argument("extra", nargs="*", help="more `ava train` flags (after --)")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=False)
    env = dict(os.environ, AVA_CACHE_DIR=str(out / "cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("COLUMNS", None)

    loads: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(5.0):
            loads.append(os.getloadavg()[0])

    before = _uptime()
    load_at_start = os.getloadavg()[0]
    sampler = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    sampler.start()
    process = subprocess.Popen([sys.executable, "-m", "ava", "train", *args.extra], cwd=out, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    data_done = None
    with open(out / "train.log", "w") as log:
        for line in process.stderr:
            now = time.perf_counter() - started
            log.write(f"{now:8.1f} {line}")
            log.flush()
            # The data are generated (and read) when `ava train` describes the dataset it trains on.
            if data_done is None and line.startswith("data:"):
                data_done = now
    status = process.wait()
    wall = time.perf_counter() - started
    done.set()
    after = _uptime()
    if status != 0:
        raise SystemExit(f"ava train exited with {status}; see {out / 'train.log'}")

    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("kind") != "eval"]
    times = [r["step_time"] for r in steps if r["step"] >= 2]
    last_eval = [r for r in records if r.get("kind") == "eval"][-1]
    result = {
        "command": "ava train " + " ".join(args.extra),
        "wall_s": round(wall, 1),
        "data_s": round(data_done or 0.0, 1),
        "after_data_s": round(wall - (data_done or 0.0), 1),
        "steps": steps[-1]["step"],
        "step_time_median_s": round(statistics.median(times), 3),
        "step_time_mean_s": round(statistics.mean(times), 3),
        "step_time_sum_s": round(sum(r["step_time"] for r in steps), 1),
        "eval": {key: round(value, 2) for key, value in last_eval.items() if key.startswith("psnr")},
        "load_at_start": round(load_at_start, 2),
        "load_mean": round(statistics.mean(loads), 2) if loads else None,
        "load_max": round(max(loads), 2) if loads else None,
        "uptime_before": before,
        "uptime_after": after,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
