"""The universal-decoder protocol of docs/evaluation.md, end to end and resumable: a decoder trained
on some subjects, measured on subjects it never saw beside two baselines, over several seeds.

    python tools/universal_protocol.py OUT --size gpu              # one GPU: 30 subjects at 512x333
    python tools/universal_protocol.py OUT --size cpu              # a small CPU check (minutes)
    python tools/universal_protocol.py OUT --size gpu --budget 500 # stop cleanly after ~500 s

Phases, each an `ava` command printed before it runs (so it can be rerun by hand) and logged to
OUT/log.txt:
  1. ava synth   OUT/data              the subjects (richer synthetic world, no headset sessions)
  2. ava train   OUT/runs/seed<S>      per seed: a decoder on the training subjects only; the
                                       validation and test subjects (ava.data.splits, split seed 0,
                                       the same for every seed), the segment EXP_free_face and one
                                       camera never reach a training batch
  3. ava eval    OUT/eval/seed<S>/cameras   per seed: every subject group on the held-out camera
                 OUT/eval/seed<S>/segment   per seed: EXP_free_face on two training cameras
                 (unseen subjects beside the nearest-identity and mean-identity baselines)
  4. OUT/table.md, OUT/summary.json    mean +- sd over the seeds; OUT/strip.png: a test subject
                                       [photo | model | nearest identity | mean identity]
Nothing is chosen on the test subjects: every setting is fixed below, and test numbers are
reported once, beside the validation ones.

On a GPU (--parallel auto) the seeds train side by side, then their evaluations run side by side:
these small decoders leave one GPU mostly idle, so three at once take little longer than one.
Each command's output goes to OUT/logs/<phase>.txt.

Resuming: every phase that finished is skipped (its output is there); ava synth resumes per
capture, ava train with --resume auto. With --budget SECONDS the tool stops the running command
when the budget is spent (ava train finishes its step and writes a checkpoint; a stopped ava eval
runs again next time), prints INCOMPLETE and exits with status 3: run the same command again.
Exit status 0 means the table is complete.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))  # this checkout's ava, here and in the commands it runs
FREE_FACE = "EXP_free_face"
FRONTAL_CAMERAS = ("401168", "401875", "402040", "401031")  # ava.runtime.cameras.FRONTAL_CAMERAS
INCOMPLETE = 3


@dataclass(frozen=True)
class Size:
    subjects: int  # all of them: training + validation + test
    validation: int
    test: int
    frames: int
    cameras: int
    downsample: int
    texture: int
    synth_primitives: int
    model: tuple[str, ...]
    steps: int
    batch: int
    learning_rate: float
    decay_at: int
    warmup: int
    eval_frames: int
    budget: float  # seconds per call, 0: none


SIZES = {
    # One H100/H200 with 16 cores, in calls of at most 500 s (docs/evaluation.md, "The evidence"),
    # the seeds side by side. Images at the original's training size, 512x333 (sensor / 8). Synthesis: 30 x 8
    # frames x 6 cameras = 1440 images at about 2.4 CPU-s each (measured on the development CPU)
    # over 16 processes: about 4 minutes. Decoder: 256^2 UV maps, 32x32 primitives of 8^3 voxels,
    # 1500 steps of batch 8 (about 14 epochs of the 24 x 7 x 5 training samples): at the 0.1 s a
    # step that launch-bound small models take on an H100 (BENCHMARKS.md), about 3 minutes a seed.
    "gpu": Size(subjects=30, validation=2, test=4, frames=8, cameras=6, downsample=8, texture=256,
                synth_primitives=32, model=("--model.uv-size", "256", "--model.prims-per-side", "32",
                                            "--model.voxels-per-prim", "8", "--model.warp-size", "32",
                                            "--model.raymarch-step", "2"),
                steps=1500, batch=8, learning_rate=1e-3, decay_at=1100, warmup=100, eval_frames=4, budget=500),
    # A 2-core CPU in minutes: 32x20 images (sensor / 128), an 8x8-primitive decoder, 120 steps per seed.
    "cpu": Size(subjects=12, validation=2, test=2, frames=8, cameras=4, downsample=128, texture=64,
                synth_primitives=16, model=("--model.uv-size", "64", "--model.prims-per-side", "8",
                                            "--model.voxels-per-prim", "8", "--model.warp-size", "8",
                                            "--model.raymarch-step", "8"),
                steps=120, batch=4, learning_rate=3e-3, decay_at=90, warmup=30, eval_frames=4, budget=0),
}

METRICS = ("psnr", "psnr_head", "ssim", "ssim_head", "lpips")
METHOD_NAMES = {"model": "model (own neutral)", "nearest_identity": "nearest identity", "mean_identity": "mean identity"}
CONDITIONS = {"cameras": "held-out camera, all segments", "segment": f"{FREE_FACE} (held out), training cameras"}


class OutOfBudget(Exception):
    """The time budget of this call is spent (or the tool was told to stop); run it again to continue."""


def _stop_on_sigterm(signum, frame) -> None:
    # SIGTERM (a scheduler's or `timeout`'s) stops the running command the way the budget does.
    raise OutOfBudget("SIGTERM")


class Runner:
    """Runs `ava` commands with the call's deadline, logging to OUT/log.txt."""

    def __init__(self, out: Path, budget: float) -> None:
        self.out = out
        self.deadline = time.monotonic() + budget if budget > 0 else None
        self.log = open(out / "log.txt", "a", encoding="utf-8")
        self.progress_path = out / "progress.json"
        self.progress = json.loads(self.progress_path.read_text()) if self.progress_path.is_file() else {}

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def record(self, phase: str, seconds: float, done: bool) -> None:
        entry = self.progress.setdefault(phase, {"seconds": 0.0, "calls": 0})
        entry["seconds"] += seconds
        entry["calls"] += 1
        entry["done"] = done
        _write_json(self.progress_path, self.progress)

    def ava(self, phase: str, argv: list[str], needs: float = 20.0) -> None:
        """Runs `ava ARGV`; raises OutOfBudget when the budget ends first (the command is stopped
        with SIGTERM, which ava train answers with a checkpoint) or when less than `needs` seconds
        are left before it starts."""
        self.ava_together([(phase, argv)], needs)

    def ava_together(self, commands: list[tuple[str, list[str]]], needs: float = 20.0) -> None:
        """Runs several `ava` commands (phase, argv) at once and waits for all of them: on a GPU the
        small decoders of this protocol leave it mostly idle, so seeds run side by side. Each
        command's output goes to OUT/logs/<phase>.txt. OutOfBudget as in `ava`; a failed command
        ends the tool once the others finished."""
        if not commands:
            return
        if self.left() < needs:
            raise OutOfBudget(commands[0][0])
        (self.out / "logs").mkdir(exist_ok=True)
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPOSITORY)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
        running = []
        for phase, argv in commands:
            line = "$ ava " + " ".join(argv)
            print(line, flush=True)
            self.log.write(f"\n[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}\n    (output: logs/{phase}.txt)\n")
            self.log.flush()
            output = open(self.out / "logs" / f"{phase}.txt", "a", encoding="utf-8")
            output.write(f"\n[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}\n")
            output.flush()
            process = subprocess.Popen([sys.executable, "-m", "ava", *argv], stdout=output, stderr=subprocess.STDOUT,
                                       env=environment)
            running.append((phase, process, output, time.monotonic()))
        failed, stopped = [], None
        try:
            for phase, process, output, started in running:
                code = process.wait(timeout=None if self.deadline is None else max(self.left(), 1.0))
                elapsed = time.monotonic() - started
                self.record(phase, elapsed, done=code == 0)
                if code != 0:
                    failed.append(f"`ava {phase}` failed (exit {code}); see {output.name}")
                else:
                    print(f"  {phase}: {elapsed:.0f} s", flush=True)
        except (subprocess.TimeoutExpired, OutOfBudget, KeyboardInterrupt) as reason:
            stopped = reason
        if stopped is not None:
            # ava train answers SIGTERM by finishing its step and writing a checkpoint.
            unfinished = [(phase, process, started) for phase, process, _, started in running
                          if process.poll() is None]
            for _, process, _ in unfinished:
                process.send_signal(signal.SIGTERM)
            for phase, process, started in unfinished:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                self.record(phase, time.monotonic() - started, done=False)
            phase = unfinished[0][0] if unfinished else commands[0][0]
            raise OutOfBudget(phase if isinstance(stopped, subprocess.TimeoutExpired) else
                              f"{phase} ({type(stopped).__name__})") from None
        for _, _, output, _ in running:
            output.close()
        if failed:
            sys.exit("; ".join(failed))


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _write_json(path: Path, document) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(temporary, path)


def _final_step(run: Path) -> int:
    pointer = run / "checkpoints" / "latest"
    if not pointer.is_file():
        return 0
    return int(pointer.read_text().strip().split("_")[-1].split(".")[0])


def _checkpoint(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def synthesise(runner: Runner, size: Size, data: Path, workers: int) -> None:
    runner.ava("synth", ["synth", "-o", str(data), "--n-ids", str(size.subjects), "--n-frames", str(size.frames),
                         "--n-cams", str(size.cameras), "--downsample", str(size.downsample), "--texture-size",
                         str(size.texture), "--prims-per-side", str(size.synth_primitives), "--no-headset",
                         "--no-keypoints", "--workers", str(workers)])


def train(size: Size, data: Path, run: Path, seed: int, device: str) -> list[tuple[str, list[str]]]:
    """The `ava train` command of one seed, or nothing when its run has finished."""
    if _final_step(run) >= size.steps:
        return []
    return [(f"train-seed{seed}", [
        "train", "--train.dataset-dir", str(data), "--train.data-csv", "ids.csv", "--train.nids", str(size.subjects),
        "--train.num-holdout-subjects", str(size.validation + size.test),
        "--train.num-validation-subjects", str(size.validation), "--train.split-seed", "0",
        "--train.holdout-segments", FREE_FACE, "--train.num-holdout-cameras", "1",
        "--train.downsample", str(size.downsample), "--train.maxiter", str(size.steps), "--train.num-epochs", "100000",
        "--train.batchsize", str(size.batch), "--train.init-learning-rate", str(size.learning_rate),
        "--train.lr-scheduler-iter", str(size.decay_at), "--train.gamma", "0.3",
        "--train.warmup-iters", str(size.warmup), "--seed", str(seed), "--compile", "off",
        "--progress.output-path", str(run), "--progress.checkpoint-freq", str(max(size.steps // 10, 1)),
        "--progress.keep-checkpoints", "2", "--progress.image-freq", str(size.steps),
        "--progress.psnr-freq", str(size.steps), "--progress.cross-id-n-subjects", "2",
        "--device", device, "--resume", "auto", *size.model])]


def training_cameras(checkpoint_path: Path, count: int = 2) -> list[str]:
    """Up to `count` cameras the run trained on, the original's frontal ones first."""
    from ava.checkpoint import load_checkpoint
    from ava.runtime.datasets import held_out_cameras

    checkpoint = load_checkpoint(checkpoint_path)
    trained = [camera for camera in checkpoint.cameras if camera not in set(held_out_cameras(checkpoint))]
    preferred = [camera for camera in FRONTAL_CAMERAS if camera in trained]
    return (preferred + [camera for camera in trained if camera not in preferred])[:count]


def evaluate(size: Size, run: Path, evaluation: Path, seed: int, device: str) -> list[tuple[str, list[str]]]:
    """The `ava eval` commands of one seed that have not finished."""
    checkpoint = _checkpoint(run)
    common = ["--identities", "trained", "validation", "test", "--device", device]
    commands = []
    if not (evaluation / "cameras" / "metrics.json").is_file():
        commands.append((f"eval-seed{seed}-cameras", ["eval", str(checkpoint), "-o", str(evaluation / "cameras"),
                                                      "--cameras", "held-out", "--frames", str(size.eval_frames),
                                                      *common]))
    if not (evaluation / "segment" / "metrics.json").is_file():
        commands.append((f"eval-seed{seed}-segment", ["eval", str(checkpoint), "-o", str(evaluation / "segment"),
                                                      "--cameras", *training_cameras(checkpoint), "--segment",
                                                      FREE_FACE, "--frames", "0", *common]))
    return commands


def _mean_sd(values: list[float | None]) -> tuple[float, float] | None:
    present = [value for value in values if value is not None]
    if not present:
        return None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def _shown(metric: str, value: tuple[float, float] | None) -> str:
    if value is None:
        return "-"
    digits = 2 if metric.startswith("psnr") else 4
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def _background_note(document: dict) -> str:
    """What `ava eval` composited the renders over, from its metrics.json `backgrounds` counts."""
    counts = document.get("backgrounds", {})
    real, plate = counts.get("real", 0), counts.get("plate", 0)
    if real and not plate:
        return "each capture's recorded background image (the release's background_image group)"
    if plate and not real:
        return "a background plate fitted to each camera's first frame"
    return (f"the recorded background image ({real} captures) or a plate fitted to each camera's first frame "
            f"({plate} captures without one)")


def report(out: Path, size: Size, seeds: list[int], args) -> str:
    """OUT/summary.json, OUT/table.md and OUT/strip.png from the evaluations; returns the table."""
    documents = {seed: {condition: json.loads((out / "eval" / f"seed{seed}" / condition / "metrics.json").read_text())
                        for condition in CONDITIONS} for seed in seeds}
    first = documents[seeds[0]]["cameras"]
    subjects = first["subjects"]
    groups = {group: sorted(folder.split("--")[-1] for folder, role in subjects.items() if role == group)
              for group in ("trained", "validation", "test")}
    rows, per_seed = [], {}
    for condition in CONDITIONS:
        for group in ("trained", "validation", "test"):
            methods = documents[seeds[0]][condition]["checkpoints"]["A"]["groups"].get(group, {})
            for method in methods:
                values = {metric: [documents[seed][condition]["checkpoints"]["A"]["groups"][group][method][metric]
                                   for seed in seeds] for metric in METRICS + ("views",)}
                per_seed[f"{condition}/{group}/{method}"] = values
                rows.append((condition, group, method, {metric: _mean_sd(values[metric]) for metric in METRICS},
                             values["views"][0]))
    # The headline: the model's PSNR over the better baseline, per seed, on the test subjects.
    gains = {}
    for condition in CONDITIONS:
        for group in ("validation", "test"):
            key = f"{condition}/{group}"
            if f"{key}/nearest_identity" in per_seed:
                gains[key] = _mean_sd([model - max(nearest, mean) for model, nearest, mean in zip(
                    per_seed[f"{key}/model"]["psnr"], per_seed[f"{key}/nearest_identity"]["psnr"],
                    per_seed[f"{key}/mean_identity"]["psnr"])])
    lpips = first["lpips"]
    lines = [f"`python tools/universal_protocol.py OUT --size {args.size} --seeds {' '.join(map(str, seeds))}`: "
             f"{len(groups['trained'])} training subjects, {len(groups['validation'])} validation "
             f"({', '.join(groups['validation'])}), {len(groups['test'])} test ({', '.join(groups['test'])}); "
             f"images {first['downsample']}x downsampled; mean ± sd over seeds {', '.join(map(str, seeds))} "
             f"(the split is the same for every seed). PSNR in dB over {_background_note(first)}; head: inside "
             f"the tracked mesh. Unseen subjects: neutral colour calibration.",
             "",
             "| condition | subjects | method | images | PSNR | PSNR head | SSIM | SSIM head | LPIPS |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for condition, group, method, values, views in rows:
        lines.append(f"| {CONDITIONS[condition]} | {group} ({len(groups[group])}) | {METHOD_NAMES[method]} | {views} | "
                     + " | ".join(_shown(metric, values[metric]) for metric in METRICS) + " |")
    lines.append("")
    for key, value in gains.items():
        condition, group = key.split("/")
        lines.append(f"- {group} subjects, {CONDITIONS[condition]}: model minus the better baseline "
                     f"{value[0]:+.2f} ± {value[1]:.2f} dB PSNR (per seed, then mean ± sd)")
    if not lpips["measured"]:
        lines.append(f"- LPIPS not measured: {lpips['reason']}")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    progress = json.loads((out / "progress.json").read_text())
    _write_json(out / "summary.json", {"size": args.size, "seeds": seeds, "subjects": subjects,
                                       "per_seed": per_seed, "gain_over_best_baseline": gains,
                                       "phases": progress, "settings": size.__dict__})
    strip(out, seeds[0], [folder for folder, role in subjects.items() if role == "test"][0])
    return table


def strip(out: Path, seed: int, subject: str) -> None:
    """OUT/strip.png: the test subject's example from the held-out camera, labelled."""
    import numpy as np
    from PIL import Image

    from ava.runtime.figures import image_grid, save_figure

    evaluation = out / "eval" / f"seed{seed}" / "cameras"
    picture = np.asarray(Image.open(evaluation / "examples" / f"{subject}.png").convert("RGB"))
    entry = json.loads((evaluation / "metrics.json").read_text())["checkpoints"]["A"]["identities"][subject]
    methods = list(entry["methods"])
    width = (picture.shape[1] - 2 * len(methods)) // (len(methods) + 1)
    panels = [picture[:, index * (width + 2): index * (width + 2) + width] for index in range(len(methods) + 1)]
    titles = [f"photo\n{subject.split('--')[-1]} (test)"]
    for method in methods:
        name = {"model": "model", "nearest_identity": f"nearest: {entry['nearest_identity'].split('--')[-1]}",
                "mean_identity": "mean identity"}[method]
        titles.append(f"{name}\n{entry['methods'][method]['psnr']:.2f} dB")
    save_figure(image_grid([list(zip(panels, titles))]), out / "strip.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="folder for the data, the runs, the evaluations, the table and the log")
    parser.add_argument("--size", choices=tuple(SIZES), default="gpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (at least 3 for mean ± sd)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 16),
                        help="synthesis processes (default: every core, at most 16)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds this call may take before it stops cleanly (default: 500 for gpu, none for cpu)")
    parser.add_argument("--parallel", choices=("auto", "yes", "no"), default="auto",
                        help="train (then evaluate) every seed at once; auto: yes on a GPU, no on a CPU")
    args = parser.parse_args()
    size = SIZES[args.size]
    parallel = args.parallel == "yes" or (args.parallel == "auto" and args.device != "cpu" and _has_cuda())
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, size.budget if args.budget is None else args.budget)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    data = out / "data"
    started = time.monotonic()
    try:
        synthesise(runner, size, data, args.workers)
        trainings = [command for seed in args.seeds
                     for command in train(size, data, out / "runs" / f"seed{seed}", seed, args.device)]

        def evaluations() -> list[tuple[str, list[str]]]:  # once training finished: it reads the checkpoints
            return [command for seed in args.seeds for command in
                    evaluate(size, out / "runs" / f"seed{seed}", out / "eval" / f"seed{seed}", seed, args.device)]

        if parallel:
            runner.ava_together(trainings, needs=60.0)
            runner.ava_together(evaluations(), needs=45.0)
        else:
            for command in trainings:
                runner.ava_together([command], needs=60.0)
            for command in evaluations():
                runner.ava_together([command], needs=45.0)
    except OutOfBudget as stop:
        print(f"INCOMPLETE: stopped at {stop} after {time.monotonic() - started:.0f} s; run the same command again "
              "to continue", flush=True)
        sys.exit(INCOMPLETE)
    table = report(out, size, args.seeds, args)
    print(table)
    print(f"done in {time.monotonic() - started:.0f} s (this call); table {out / 'table.md'}, strip {out / 'strip.png'}, "
          f"everything else under {out}")


if __name__ == "__main__":
    main()
