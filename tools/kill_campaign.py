"""Kill `ava train` again and again, at random moments and at every named crash point, and check
after every kill what docs/training.md#what-is-guaranteed promises (CPU only, no GPU needed).

Each round starts `ava train ... --resume auto` on a tiny synthetic set and model as a fresh
process, then kills it: with SIGKILL to its process group at a random moment (during start-up or
between 0 and a few steps after its first step) or, in the other rounds, through a named crash
point (AVA_CRASH_AT, ava.faults: after a step, after its metrics line, with a checkpoint half
written, renamed but not pointed at, pointed at but old ones not pruned). After each kill it checks:

- `checkpoints/latest`, where present, names a checkpoint that loads and passes its digest check;
- `--resume auto`'s choice loads, and the steps lost (the steps completed minus the step resumed
  from) are at most --progress.checkpoint-freq. The steps completed are the highest step in the
  metrics log, plus one after the `after-step` crash point (the step is done, its line not yet
  written); a SIGKILL between a step and its line is counted one short;

and once a run reaches its last step, that its final weights and logged losses equal those of a
run that was never interrupted; then it starts the next run. Results go to OUT/rounds.jsonl (one
line per kill) and OUT/summary.json; the tool is resumable: run it again with the same OUT and it
continues where it stopped.

    python tools/kill_campaign.py -o kill-campaign --kills 40
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY_MODEL = ["--model.uv-size", "64", "--model.prims-per-side", "8", "--model.voxels-per-prim", "8",
              "--model.warp-size", "8", "--model.raymarch-step", "8"]
STEPS = 12
FREQ = 3
POINTS = ("after-step", "metrics-logged", "checkpoint-written", "checkpoint-renamed", "latest-written", "pruned")


def train_argv(dataset: Path, run: Path) -> list[str]:
    return ["train", "--train.dataset-dir", str(dataset), "--train.maxiter", str(STEPS), "--progress.output-path",
            str(run), "--train.nids", "2", "--train.batchsize", "2", "--train.downsample", "128",
            "--train.num-workers", "1", "--train.warmup-iters", "2", "--train.num-holdout-cameras", "2",
            "--progress.checkpoint-freq", str(FREQ), "--progress.keep-checkpoints", "2", "--progress.image-freq",
            "1000", "--progress.psnr-freq", "1000", "--progress.no-cross-id", "--device", "cpu", "--threads", "1",
            *TINY_MODEL]


def environment(extra: dict | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="400")
    env.pop("AVA_CRASH_AT", None)
    return {**env, **(extra or {})}


def step_records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if record.get("kind") is None:
                records.append(record)
    return records


def tiny_dataset(dataset: Path, log) -> Path:
    """The campaigns' tiny synthetic set at `dataset` (made once; tools/peer_loss_check.py uses it too)."""
    from ava.synth import generate
    from ava.synth.config import SynthConfig

    if not (dataset / "ids.csv").is_file():
        log("generating the tiny synthetic set")
        generate(dataset, SynthConfig(n_ids=2, n_frames=4, n_cams=3, texture_size=64, downsample=128,
                                      prims_per_side=8, voxels=4, mesh_columns=16, mesh_rows=12, keypoints=False,
                                      workers=1), progress=False)
    return dataset


def prepare(out: Path, log) -> tuple[Path, Path]:
    """The tiny dataset and the unbroken reference run (made once)."""
    dataset = tiny_dataset(out / "data", log)
    reference = out / "reference"
    if not (reference / "checkpoints" / f"step_{STEPS:08d}.safetensors").is_file():
        log("training the unbroken reference run")
        shutil.rmtree(reference, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "ava", *train_argv(dataset, reference)], check=True, cwd=REPO,
                       env=environment(), capture_output=True)
    return dataset, reference


def kill_once(dataset: Path, run: Path, rng: random.Random, crashes_so_far: int) -> dict:
    """One attempt, killed (or finishing); what it was and what was found afterwards. Crash points
    take turns, so that every one is tried about as often."""
    argv = [sys.executable, "-m", "ava", *train_argv(dataset, run), "--resume", "auto"]
    before = len(step_records(run))
    if rng.random() < 0.5:
        point = POINTS[crashes_so_far % len(POINTS)]
        occurrence = rng.randint(1, 2 if point in POINTS[:2] else 1)
        how = {"kind": "crash point", "point": point, "occurrence": occurrence}
        result = subprocess.run(argv, cwd=REPO, env=environment({"AVA_CRASH_AT": f"{point}:{occurrence}"}),
                                capture_output=True, text=True, timeout=600)
        status, stderr = result.returncode, result.stderr
    else:
        process = subprocess.Popen(argv, cwd=REPO, env=environment(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   text=True, start_new_session=True)
        during_startup = rng.random() < 0.15
        deadline = time.monotonic() + 600
        if not during_startup:  # wait for this attempt's first step
            while len(step_records(run)) <= before and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        delay = rng.uniform(0.0, 3.0 if during_startup else 2.5)
        how = {"kind": "SIGKILL", "moment": ("start-up + " if during_startup else "first step + ") + f"{delay:.2f} s"}
        time.sleep(delay)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
        status = process.returncode
    return {**how, "status": status, "stderr_tail": stderr[-400:] if status not in (0, -9, 86) else ""}


def check(run: Path, completed_extra: int = 0) -> dict:
    from ava.checkpoint import load_checkpoint
    from ava.runtime.rundir import load_for_resume

    found: dict = {}
    latest = run / "checkpoints" / "latest"
    if latest.is_file():
        found["latest"] = load_checkpoint(run / "checkpoints" / latest.read_text().strip()).step
    said: list[str] = []
    resumed = load_for_resume("auto", run, load_checkpoint, lambda line, **kwargs: said.append(str(line)))
    found["resume_step"] = resumed.step if resumed is not None else 0
    found["logged"] = max([record["step"] for record in step_records(run)], default=0)
    found["lost"] = found["logged"] + completed_extra - found["resume_step"]
    found["temporaries"] = sorted(path.name for path in (run / "checkpoints").glob(".*")) if \
        (run / "checkpoints").is_dir() else []
    found["ok"] = found["lost"] <= FREQ and ("latest" not in found or found["latest"] <= found["logged"])
    return found


def compare(run: Path, reference: Path) -> dict:
    from ava.checkpoint import load_checkpoint

    name = f"checkpoints/step_{STEPS:08d}.safetensors"
    ours, theirs = load_checkpoint(run / name), load_checkpoint(reference / name)
    weights = max(float((ours.model_state[key] - value).abs().max()) for key, value in theirs.model_state.items())
    losses = [record["loss"] for record in step_records(run)]
    expected = [record["loss"] for record in step_records(reference)]
    steps = [record["step"] for record in step_records(run)]
    loss_gap = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, expected)) if len(losses) == len(expected) \
        else float("inf")
    return {"steps_continuous": steps == list(range(1, STEPS + 1)), "max_weight_difference": weights,
            "max_relative_loss_difference": loss_gap, "identical": steps == list(range(1, STEPS + 1))
            and weights <= 1e-6 and loss_gap <= 1e-6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument("--kills", type=int, default=40, help="kill points in total")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AVA_CACHE_DIR", str(out / "cache"))
    logfile = open(out / "log.txt", "a")

    def log(line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        print(stamped, flush=True)
        logfile.write(stamped + "\n")
        logfile.flush()

    dataset, reference = prepare(out, log)
    rounds_path = out / "rounds.jsonl"
    rounds = [json.loads(line) for line in rounds_path.read_text().splitlines()] if rounds_path.is_file() else []
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()] \
        if (out / "runs.jsonl").is_file() else []
    rng = random.Random(f"{args.seed}-{len(rounds)}")
    run = out / f"run{len(runs):03d}"
    while len(rounds) < args.kills:
        how = kill_once(dataset, run, rng, sum(record["kind"] == "crash point" for record in rounds))
        if how["status"] == 0:  # it got to the end before the kill
            result = compare(run, reference)
            runs.append({"run": run.name, **result})
            with open(out / "runs.jsonl", "a") as handle:
                handle.write(json.dumps(runs[-1]) + "\n")
            log(f"{run.name} finished: {result}")
            run = out / f"run{len(runs):03d}"
            continue
        found = check(run, completed_extra=int(how.get("point") == "after-step"))
        record = {"round": len(rounds), "run": run.name, **how, **found}
        rounds.append(record)
        with open(rounds_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        log(f"kill {len(rounds)}: {how['kind']} {how.get('point') or how.get('moment')} -> logged {found['logged']}, "
            f"resumes at {found['resume_step']} (lost {found['lost']}){'' if found['ok'] else '  VIOLATION'}")
    if run.exists() and not any(entry["run"] == run.name for entry in runs):  # finish the last run, compare it too
        result = subprocess.run([sys.executable, "-m", "ava", *train_argv(dataset, run), "--resume", "auto"],
                                cwd=REPO, env=environment(), capture_output=True, text=True)
        if result.returncode != 0:
            log(f"finishing {run.name} failed: {result.stderr[-500:]}")
            raise SystemExit(1)
        runs.append({"run": run.name, **compare(run, reference)})
        with open(out / "runs.jsonl", "a") as handle:
            handle.write(json.dumps(runs[-1]) + "\n")
    kinds: dict[str, int] = {}
    for record in rounds:
        key = record["point"] if record["kind"] == "crash point" else "SIGKILL"
        kinds[key] = kinds.get(key, 0) + 1
    for record in rounds:  # rounds recorded before the after-step correction count it here
        record["lost"] = record["logged"] + int(record.get("point") == "after-step") - record["resume_step"]
    summary = {"kills": len(rounds), "by_kind": kinds,
               "violations": sum(not record["ok"] or record["lost"] > FREQ for record in rounds),
               "max_lost_steps": max(record["lost"] for record in rounds), "checkpoint_freq": FREQ,
               "runs": len(runs), "runs_identical_to_unbroken": sum(entry["identical"] for entry in runs),
               "max_weight_difference": max(entry["max_weight_difference"] for entry in runs)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"summary: {summary}")


if __name__ == "__main__":
    main()
