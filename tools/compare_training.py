"""Train the original ava-256 code and `ava train ava256` side by side on one dataset, from the same
initial weights, and plot both loss curves.

    # a real-topology synthetic set at the original's training size (512x333 images, 1024^2 textures)
    AVA_TOPOLOGY_URL=$ORIG/assets/face_topology.obj python -m ava synth -o /tmp/real256 --topology original \\
        --n-ids 4 --n-frames 12 --n-cams 12 --texture-size 1024 --downsample 8
    python tools/compare_training.py --original $ORIG --dataset /tmp/real256 --out /tmp/compare

`--original` is a checkout of facebookresearch/ava-256 whose CUDA extensions are built in place
(`make` in extensions/mvpraymarch and extensions/utils) with its Python dependencies installed;
nothing of it is copied into ava. The steps, each in its own process:

1. init: the original's dataset and model are built by its own code (`train_csv_loader`, its
   `MultiCaptureDataset`, `get_autoencoder`, after `torch.manual_seed(--seed)`), and the model's
   initial state dict is saved as OUT/init/aeparams_000000.pt (`--init-state` gives one instead).
2. convert: `ava convert` turns it into OUT/init/init.safetensors (camera rows reordered to ava's
   sorted camera ids, statistics from the dataset).
3. original: its training script `ddp-train.py` runs unchanged on one GPU with a config generated
   from its own configs/config.yaml (dataset, ids, number of identities, batch size, downsample,
   `maxiter`, epochs, the initial state dict as `train.checkpoint`, output folder OUT/original;
   TensorBoard off); the loss of every step is read from its log (OUT/original/train.log).
4. ava: `ava train ava256` with the same data settings, `--train.checkpoint` the converted
   weights, for the same number of steps (OUT/ava, metrics.jsonl).

Both sides use the original's schedule (Adam 2e-4, 100 warm-up steps on the tracked mesh, the
same loss weights and gradient clipping); the data order and the VAE's noise differ, so the
curves are compared as curves, not step by step. Writes OUT/losses.json (per step: loss and its
terms for each side, wall-clock times, settings) and OUT/losses.png. `--only ava` runs steps 2
and 4 alone (with `--init-state`; no GPU needed), `--only original` steps 1 and 3.
Exit status: 0 done, 2 bad input (one line saying what to do), 1 a side failed (its log named).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from original_checkout import CheckoutError, OriginalCheckout  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TERMS = ("irgbl1", "vertl1", "kldiv", "primvolsum")
WARMUP_STEPS = 100  # both sides place primitives on the tracked mesh for the first 100 steps
# "... Rank   0 Iteration 12 loss = 123.4567, irgbl1 = 1.0000, ... time: 0.123 s" (the original's log line)
_ORIGINAL_LINE = re.compile(r"Iteration (\d+) loss = (\S+), (.*) time: ([0-9.]+) s")
_MODEL_FLAGS = ("uv_size", "prims_per_side", "voxels_per_prim", "warp_size", "volradius", "raymarch_step")


class BadInput(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the module docstring for the steps and outputs.")
    parser.add_argument("--original", type=Path, help="checkout of facebookresearch/ava-256 with its CUDA extensions built")
    parser.add_argument("--dataset", type=Path, required=True, help="dataset folder (ids.csv, capture folders)")
    parser.add_argument("--out", type=Path, default=Path("compare_training"), help="output folder")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per side")
    parser.add_argument("--batchsize", type=int, default=4)
    parser.add_argument("--downsample", type=int, default=8, help="4096x2668 sensor / this (8: 512x333)")
    parser.add_argument("--nids", type=int, default=0, help="identities (default: every row of ids.csv)")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per side")
    parser.add_argument("--seed", type=int, default=0, help="seeds the original model's initial weights and ava's run")
    parser.add_argument("--only", choices=("both", "original", "ava"), default="both")
    parser.add_argument("--init-state", type=Path, help="start both sides from this original-format state dict "
                        "(default: the original's freshly built model)")
    parser.add_argument("--ava-args", default="", help="extra flags for `ava train`, e.g. '--compile'")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batchsize < 1 or args.downsample < 1 or args.nids < 0 or args.num_workers < 0:
        raise BadInput("--steps, --batchsize and --downsample must be positive; --nids and --num-workers not negative")
    return args


def _ids_count(dataset: Path) -> int:
    lines = [line for line in (dataset / "ids.csv").read_text().splitlines()[1:] if line.strip()]
    return len(lines)


def check_inputs(args: argparse.Namespace) -> OriginalCheckout | None:
    """Everything that can be wrong before any work starts (fail fast, one line each)."""
    dataset = args.dataset
    if not (dataset / "ids.csv").is_file():
        raise BadInput(f"{dataset} has no ids.csv; make a set with `ava synth -o {dataset} --topology original ...`")
    available = _ids_count(dataset)
    args.nids = args.nids or available
    if args.nids > available:
        raise BadInput(f"--nids {args.nids} but {dataset / 'ids.csv'} lists {available} captures")
    if args.nids < 2:
        raise BadInput("the original's cross-identity pictures need at least 2 identities")
    if args.only == "ava" and args.init_state is None:
        raise BadInput("--only ava needs --init-state (the original's initial weights come from its side)")
    if args.init_state is not None and not args.init_state.is_file():
        raise BadInput(f"--init-state {args.init_state} does not exist")
    if args.only == "ava":
        return None
    if args.original is None:
        raise BadInput("--original PATH (a checkout of facebookresearch/ava-256) is needed for its side")
    try:
        checkout = OriginalCheckout(args.original)
        checkout.require_extensions()
        checkout.require_modules()
    except CheckoutError as error:
        raise BadInput(error.message) from None
    topology = dataset / "face_topology.obj"
    if not topology.is_file() or topology.read_bytes() != (checkout.path / "assets" / "face_topology.obj").read_bytes():
        raise BadInput(f"{dataset} is not on the original's face topology (the original model only has that one); "
                       f"generate it with `ava synth --topology original`")
    import torch

    if not torch.cuda.is_available():
        raise BadInput("the original's training needs a CUDA GPU (its raymarcher is a CUDA extension)")
    return checkout


def _run(command: list[str], log: Path, cwd: Path | None = None, env: dict | None = None, echo=None) -> float:
    """Runs `command`, its output into `log` (and lines chosen by `echo` to the console); returns
    its wall-clock seconds. Raises SystemExit(1) naming the log when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as handle:
        handle.write("$ " + shlex.join(command) + "\n")
        handle.flush()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        for line in process.stdout:
            handle.write(line)
            if echo is not None and echo(line):
                print(line.rstrip()[-160:], flush=True)
        code = process.wait()
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        print(tail, file=sys.stderr)
        raise SystemExit(f"{command[1] if len(command) > 1 else command[0]} failed (exit {code}); see {log}")
    return time.perf_counter() - started


def _environment(**extra: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def make_initial_state(args, checkout: OriginalCheckout, path: Path) -> None:
    """Step 1, in a child process: the original's model built by its own code, saved before any step."""
    command = [sys.executable, str(Path(__file__).resolve()), "_init", "--original", str(checkout.path), "--dataset",
               str(args.dataset.resolve()), "--nids", str(args.nids), "--downsample", str(args.downsample),
               "--seed", str(args.seed), "--out", str(path)]
    _run(command, path.parent / "init.log", cwd=checkout.path, env=_environment())


def _init_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    for name in ("--original", "--dataset", "--out"):
        parser.add_argument(name, type=Path, required=True)
    for name in ("--nids", "--downsample", "--seed"):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args(argv)
    import torch

    checkout = OriginalCheckout(args.original)
    script = checkout.train_script()
    captures, directories = script.train_csv_loader(str(args.dataset), str(args.dataset / "ids.csv"), args.nids)
    dataset = script.AvaMultiCaptureDataset(captures, directories, downsample=args.downsample)
    torch.manual_seed(args.seed)
    model = script.get_autoencoder(dataset, assetpath=str(checkout.path / "assets"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"saved the original model's initial weights to {args.out}")
    return 0


def convert(args, state: Path, output: Path) -> dict:
    """Step 2: `ava convert`; returns the model config recorded in the converted checkpoint."""
    command = [sys.executable, "-m", "ava", "convert", str(state), "-o", str(output), "--dataset-dir",
               str(args.dataset), "--ids-csv", str(args.dataset / "ids.csv"), "--step", "0", "--overwrite"]
    _run(command, output.parent / "convert.log", env=_environment())
    from ava.checkpoint import load_checkpoint

    return load_checkpoint(output).config["model"]


def _steps_per_epoch(args) -> int:
    from ava.data.dataset import MultiCaptureDataset
    from ava.data.ids import read_ids_csv

    captures = read_ids_csv(args.dataset / "ids.csv")[: args.nids]
    samples = len(MultiCaptureDataset(args.dataset, captures, downsample=args.downsample, progress=False))
    if samples < args.batchsize:
        raise BadInput(f"{args.dataset} has {samples} samples for {args.nids} identities: fewer than one batch")
    return samples // args.batchsize  # the original drops the last partial batch


def train_original(args, checkout: OriginalCheckout, state: Path) -> tuple[dict, float]:
    """Step 3: its ddp-train.py with a generated config; the per-step losses from its log."""
    out = (args.out / "original").resolve()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = state
    if not state.name.endswith("_000000.pt"):  # its script reads the start step from the file name
        checkpoint = (args.out / "init" / "aeparams_000000.pt").resolve()
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_bytes(state.read_bytes())
    # The script stops at `maxiter` only inside an epoch (the next epoch would run one more step),
    # so it gets exactly the epochs that hold the steps.
    config = checkout.config({
        "train.dataset_dir": str(args.dataset.resolve()), "train.data_csv": str((args.dataset / "ids.csv").resolve()),
        "train.nids": args.nids, "train.checkpoint": str(checkpoint), "train.maxiter": args.steps - 1,
        "train.num_epochs": math.ceil(args.steps / _steps_per_epoch(args)), "train.downsample": args.downsample,
        "train.num_workers": args.num_workers, "train.batchsize": args.batchsize,
        "progress.output_path": str(out), "progress.cross_id_n_subjects": min(3, args.nids - 1),
        "progress.tensorboard.logdir": None,
    })
    config_path = out / "config.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = _environment(CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0])
    seconds = _run([sys.executable, "ddp-train.py", "--config", str(config_path)], out / "train.log",
                   cwd=checkout.path, env=env, echo=_every(50, "Iteration"))
    return parse_original_log((out / "train.log").read_text()), seconds


def _every(period: int, marker: str):
    def chosen(line: str) -> bool:
        found = _ORIGINAL_LINE.search(line)
        return (found is not None and int(found.group(1)) % period == 0) or ("Error" in line and marker not in line)
    return chosen


def parse_original_log(text: str) -> dict:
    """{"step": [1..N], "loss": [...], <term>: [...], "step_time": [...]} from the original's log
    (its iteration i is ava's step i+1; a repeated iteration line keeps its first occurrence)."""
    curves: dict[str, list] = {"step": [], "loss": [], **{term: [] for term in TERMS}, "step_time": []}
    seen = set()
    for found in _ORIGINAL_LINE.finditer(text):
        iteration = int(found.group(1))
        if iteration in seen:
            continue
        seen.add(iteration)
        terms = dict(part.split(" = ") for part in found.group(3).split(", "))
        curves["step"].append(iteration + 1)
        curves["loss"].append(float(found.group(2)))
        for term in TERMS:
            curves[term].append(float(terms[term]) if term in terms else None)
        curves["step_time"].append(float(found.group(4)))
    return curves


def train_ava(args, initial: Path, model: dict) -> tuple[dict, float]:
    """Step 4: `ava train ava256` from the converted weights, with the model size they were saved with."""
    out = (args.out / "ava").resolve()
    command = [sys.executable, "-m", "ava", "train", "ava256", "--train.dataset-dir", str(args.dataset.resolve()),
               "--train.data-csv", "ids.csv", "--train.nids", str(args.nids), "--train.checkpoint", str(initial),
               "--train.maxiter", str(args.steps), "--train.num-epochs", "100000", "--train.batchsize",
               str(args.batchsize), "--train.downsample", str(args.downsample), "--train.num-workers",
               str(args.num_workers), "--progress.output-path", str(out), "--seed", str(args.seed),
               "--progress.cross-id-n-subjects", str(min(3, args.nids - 1)), "--progress.image-freq", "100"]
    for name in _MODEL_FLAGS:
        command += [f"--model.{name.replace('_', '-')}", str(model[name])]
    command += shlex.split(args.ava_args)
    if (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()  # a fresh run, not an appended one
    seconds = _run(command, args.out / "ava" / "train.log", env=_environment(), echo=lambda line: "step" in line)
    return read_ava_metrics(out / "metrics.jsonl"), seconds


def read_ava_metrics(path: Path) -> dict:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records = [record for record in records if record.get("kind") != "eval"]
    curves = {"step": [r["step"] for r in records], "loss": [r["loss"] for r in records]}
    curves |= {term: [r.get(term) for r in records] for term in TERMS}
    curves["step_time"] = [r.get("step_time") for r in records]
    return curves


def _smooth(values: list[float], window: int) -> list[float]:
    out, total, queue = [], 0.0, []
    for value in values:
        queue.append(value)
        total += value
        if len(queue) > window:
            total -= queue.pop(0)
        out.append(total / len(queue))
    return out


def plot(report: dict, path: Path) -> None:
    """Total loss and image L1 of both sides against the step, raw (thin) and smoothed (thick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)
    colours = {"original": "tab:blue", "ava": "tab:orange"}
    for axis, key, title in ((axes[0], "loss", "total loss"), (axes[1], "irgbl1", "image L1 (irgbl1, 0..255 units)")):
        for side, curves in report["sides"].items():
            points = [(s, v) for s, v in zip(curves["step"], curves[key]) if v is not None and math.isfinite(v)]
            if not points:
                continue
            steps, values = zip(*points)
            window = max(1, len(values) // 20)
            label = f"{side} (mean of the last {window} steps: {sum(values[-window:]) / window:.2f})"
            axis.plot(steps, values, color=colours.get(side), alpha=0.25, linewidth=0.8)
            axis.plot(steps, _smooth(list(values), window), color=colours.get(side), linewidth=2, label=label)
        axis.axvline(WARMUP_STEPS, color="grey", linestyle=":", linewidth=1)  # end of the warm-up on the tracked mesh
        axis.set_yscale("log")
        axis.set_xlabel("step")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    settings = report["settings"]
    figure.suptitle(f"original ava-256 vs ava train ava256, same initial weights: {settings['identities']} ids, "
                    f"batch {settings['batchsize']}, downsample {settings['downsample']}, {settings['steps']} steps")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run(args: argparse.Namespace) -> int:
    checkout = check_inputs(args)
    args.out.mkdir(parents=True, exist_ok=True)
    args.dataset = args.dataset.resolve()
    init_dir = (args.out / "init").resolve()
    state = args.init_state.resolve() if args.init_state else init_dir / "aeparams_000000.pt"
    report = {"settings": {"dataset": str(args.dataset), "identities": args.nids, "steps": args.steps,
                           "batchsize": args.batchsize, "downsample": args.downsample, "seed": args.seed,
                           "init_state": str(state), "original": str(checkout.path) if checkout else None},
              "sides": {}, "wall_s": {}}
    if args.init_state is None:
        print(f"[1/4] building the original model's initial weights -> {state}", flush=True)
        make_initial_state(args, checkout, state)
    if args.only in ("both", "ava"):  # before the long runs: a conversion problem shows at once
        print("[2/4] converting the initial weights with `ava convert`", flush=True)
        model = convert(args, state, init_dir / "init.safetensors")
    if args.only in ("both", "original"):
        print(f"[3/4] training the original code for {args.steps} steps (log: {args.out / 'original' / 'train.log'})",
              flush=True)
        report["sides"]["original"], report["wall_s"]["original"] = train_original(args, checkout, state)
    if args.only in ("both", "ava"):
        print(f"[4/4] training `ava train ava256` for {args.steps} steps", flush=True)
        report["sides"]["ava"], report["wall_s"]["ava"] = train_ava(args, init_dir / "init.safetensors", model)
    for side, curves in report["sides"].items():
        if len(curves["step"]) != args.steps:
            raise SystemExit(f"the {side} side logged {len(curves['step'])} steps, expected {args.steps}")
    (args.out / "losses.json").write_text(json.dumps(report, indent=1))
    plot(report, args.out / "losses.png")
    for side, curves in report["sides"].items():
        tenth = max(1, len(curves["loss"]) // 10)
        first, last = sum(curves["loss"][:tenth]) / tenth, sum(curves["loss"][-tenth:]) / tenth
        print(f"{side}: loss first 10% {first:.3f} -> last 10% {last:.3f}; {report['wall_s'][side]:.0f} s wall clock")
    print(f"wrote {args.out / 'losses.json'} and {args.out / 'losses.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_init"]:
        return _init_main(argv[1:])
    try:
        return run(parse_args(argv))
    except BadInput as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
