"""Multi-GPU scaling of `ava train ava256` on one host: samples/s, efficiency, loss curves.

    python tools/bench_scaling.py [--nproc N] [--per-gpu-batch 4] [--steps 120] [--warmup-iters 40]
                                  [--skip 50] [--data DIR] [--out DIR] [--json OUT.json]
                                  [--device cuda|cpu] [-- more `ava train` flags]

1. Data: a synthetic set in the real layout at the original's training size (`ava synth
   --texture-size 1024 --downsample 8`: 512x333 images, 1024^2 textures), generated once into
   DATA/synth (kept small: --synth-ids x --synth-frames x --synth-cams images), listed
   --replicas times under other subject ids in DATA/replicas (symlinks), so that an epoch spans
   the run: at each epoch start the loader refills, one batch of data wait that real epochs
   (hours) never show. A --data folder that already has an ids.csv is used as is.
2. Runs, one after the other, each `torchrun --standalone --nproc-per-node k -m ava train ava256`
   on the set for --steps steps: k = 1 .. N GPUs with the same --per-gpu-batch (throughput), then
   1 GPU with batch N x per-GPU batch, the global batch of the N-GPU run (loss curves), then N
   GPUs again for each DDP bucket size of --bucket-mb (e.g. `--bucket-mb 10,100`).
   Periodic work is pushed past the run's end, and a run is stopped as soon as its last step is
   logged (the final evaluation and checkpoint measure nothing here). Every process gets
   NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NVSHMEM_DISABLE_NVLS=1 (NVLink
   multicast off). Training runs as `ava train` does by default (on a GPU: TF32, fused Adam, the
   parts that gain compiled; the first run of each batch size pays the compile time).
3. From each run's metrics.jsonl (rank 0's record of each step; steps after --skip):
   samples/s = global batch x steps / their summed step time; scaling efficiency = samples/s on
   k / (k x samples/s on 1); median step time; median data wait (time spent waiting for the
   loader); median GPU utilisation (NVML, rank 0's GPU, every 10th step); the mean loss over the
   last 10% of steps. Printed as a Markdown table for BENCHMARKS.md, with the host, GPU and
   versions; the 1-GPU and N-GPU runs of the same global batch are compared (running means of
   the loss after warm-up) and all loss curves are drawn into OUT/loss_curves.png when
   matplotlib is installed (`pip install matplotlib`). OUT/summary.json has everything.

The run folders keep metrics.jsonl and config.json, and each run's output is in OUT/NAME.log.
The defaults are meant to finish within about 7 minutes on a host with 2 GPUs, data generation
included (an estimate until measured). On real data (--data with an ids.csv), limit the
captures after `--`, e.g. `-- --train.nids 8`.
`--device cpu` (gloo) with small `--model.*` flags after `--` runs the same on a CPU, for tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

NVLINK_MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
NEVER = 10**9  # a period no run reaches: the periodic action happens only at the last step
SMOOTHING = 10  # steps in the running mean that compares loss curves
DEFAULT_BUCKET_MB = 25.0  # ava train's --train.ddp-bucket-mb


@dataclass
class RunSpec:
    """One `ava train` launch."""

    name: str
    nproc: int
    batch: int
    """Per process."""
    bucket_mb: float | None = None
    """--train.ddp-bucket-mb (None: ava's default)."""

    @property
    def global_batch(self) -> int:
        return self.nproc * self.batch


@dataclass
class RunSummary:
    """What one run's metrics.jsonl says (timings over the steps after `skip`)."""

    spec: RunSpec
    steps: int
    timed_steps: int
    samples_per_s: float
    step_ms: float
    data_ms: float
    gpu_utilisation: float | None
    loss_end: float
    losses: list[float] = field(default_factory=list)
    warmup_steps: int = 0
    wall_s: float = float("nan")
    efficiency: float | None = None
    num_workers: int | None = None


def plan_runs(nproc: int, per_gpu_batch: int, counts: list[int] | None = None,
              same_global_batch: bool = True, bucket_sizes: list[float] | None = None) -> list[RunSpec]:
    """k GPUs at the same per-GPU batch for every k in `counts` (default 1..nproc), then one GPU at
    the largest run's global batch when that run has several GPUs, then the largest run again
    with each DDP bucket size of `bucket_sizes` (MB)."""
    counts = sorted(set(counts or range(1, nproc + 1)))
    if not counts or counts[0] < 1 or counts[-1] > nproc:
        raise ValueError(f"GPU counts {counts} must lie in 1..{nproc}")
    runs = [RunSpec(f"{k}x{per_gpu_batch}", k, per_gpu_batch) for k in counts]
    largest = counts[-1]
    if same_global_batch and largest > 1:
        runs.append(RunSpec(f"1x{largest * per_gpu_batch}", 1, largest * per_gpu_batch))
    if largest > 1:
        runs += [RunSpec(f"{largest}x{per_gpu_batch}-bucket{size:g}", largest, per_gpu_batch, size)
                 for size in bucket_sizes or ()]
    return runs


def read_steps(metrics: Path) -> list[dict]:
    """The per-step records of a metrics.jsonl (evaluations and torn last lines left out)."""
    records = []
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") != "eval" and "step_time" in record:
            records.append(record)
    return records


def summarise(spec: RunSpec, records: list[dict], skip: int) -> RunSummary:
    """Timings over the steps after the first `skip` (all of them when fewer), loss at the end."""
    if not records:
        raise ValueError(f"run {spec.name}: no step records")
    timed = [record for record in records if record["step"] > skip] or records
    total_time = sum(record["step_time"] for record in timed)
    utilisation = [record["gpu_utilisation"] for record in timed if record.get("gpu_utilisation") is not None]
    tenth = max(1, len(records) // 10)
    return RunSummary(
        spec=spec, steps=len(records), timed_steps=len(timed),
        samples_per_s=spec.global_batch * len(timed) / total_time if total_time > 0 else float("nan"),
        step_ms=1000 * statistics.median(record["step_time"] for record in timed),
        data_ms=1000 * statistics.median(record["data_time"] for record in timed),
        gpu_utilisation=statistics.median(utilisation) if utilisation else None,
        loss_end=statistics.fmean(record["loss"] for record in records[-tenth:]),
        losses=[record["loss"] for record in records],
        warmup_steps=sum(1 for record in records if record.get("warmup")),
    )


def add_efficiency(summaries: list[RunSummary]) -> None:
    """Efficiency of every run with the 1-GPU run's per-GPU batch: samples/s / (k x samples/s of 1)."""
    single = {summary.spec.batch: summary for summary in summaries if summary.spec.nproc == 1}
    for summary in summaries:
        base = single.get(summary.spec.batch)
        if base is not None and base.samples_per_s > 0:
            summary.efficiency = summary.samples_per_s / (summary.spec.nproc * base.samples_per_s)


def running_mean(values: list[float], window: int = SMOOTHING) -> list[float]:
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def compare_curves(single: RunSummary, multi: RunSummary) -> dict:
    """Loss curves of one GPU and several at the same global batch, after warm-up: the mean
    absolute difference of their running means, absolute and relative to the mean loss."""
    start = max(single.warmup_steps, multi.warmup_steps)
    count = min(len(single.losses), len(multi.losses))
    a = running_mean(single.losses[:count])[start:]
    b = running_mean(multi.losses[:count])[start:]
    if not a:
        return {"steps": 0}
    difference = statistics.fmean(abs(x - y) for x, y in zip(a, b))
    level = statistics.fmean((x + y) / 2 for x, y in zip(a, b))
    return {"single": single.spec.name, "multi": multi.spec.name, "steps": len(a), "from_step": start + 1,
            "mean_abs_difference": difference, "relative": difference / level if level else float("nan"),
            "loss_end": [single.loss_end, multi.loss_end]}


def _cell(value, fmt: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def format_table(summaries: list[RunSummary]) -> str:
    """Markdown table, one row per run."""
    lines = ["| GPUs | batch per GPU | global batch | DDP buckets | samples/s | scaling efficiency | step | "
             "data wait | GPU utilisation | loss, last 10% of steps |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for summary in summaries:
        spec = summary.spec
        efficiency = None if summary.efficiency is None else 100 * summary.efficiency
        buckets = "—" if spec.nproc == 1 else f"{spec.bucket_mb or DEFAULT_BUCKET_MB:g} MB"
        lines.append(f"| {spec.nproc} | {spec.batch} | {spec.global_batch} | {buckets} | {summary.samples_per_s:.1f} | "
                     f"{_cell(efficiency, '.0f')}{'%' if efficiency is not None else ''} | "
                     f"{summary.step_ms:.1f} ms | {summary.data_ms:.1f} ms | "
                     f"{_cell(summary.gpu_utilisation, '.0f')}{'%' if summary.gpu_utilisation is not None else ''} | "
                     f"{summary.loss_end:.3f} |")
    return "\n".join(lines)


def describe_comparison(comparison: dict) -> str:
    if not comparison.get("steps"):
        return "loss curves: no steps after warm-up to compare"
    return (f"loss curves at the same global batch, {comparison['single']} vs {comparison['multi']} "
            f"(GPUs x batch): the {SMOOTHING}-step running means differ by {comparison['mean_abs_difference']:.3f} "
            f"on average over steps {comparison['from_step']}..{comparison['from_step'] + comparison['steps'] - 1} "
            f"({100 * comparison['relative']:.1f}% of the loss); last 10%: {comparison['loss_end'][0]:.3f} vs "
            f"{comparison['loss_end'][1]:.3f}")


def plot_curves(summaries: list[RunSummary], path: Path) -> Path | None:
    """Loss against step for every run (thin: raw, thick: running mean); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(9, 5), dpi=120)
    for summary in summaries:
        steps = list(range(1, len(summary.losses) + 1))
        label = f"{summary.spec.nproc} GPU{'s' if summary.spec.nproc > 1 else ''} x batch {summary.spec.batch}"
        if summary.spec.bucket_mb is not None:
            label += f", {summary.spec.bucket_mb:g} MB buckets"
        line, = axis.plot(steps, summary.losses, linewidth=0.6, alpha=0.35)
        # Several GPUs dashed: where a 1-GPU curve of the same global batch lies under it, both show.
        axis.plot(steps, running_mean(summary.losses), color=line.get_color(), linewidth=1.8,
                  linestyle="--" if summary.spec.nproc > 1 else "-",
                  label=f"{label} (global {summary.spec.global_batch})")
    warmup = max((summary.warmup_steps for summary in summaries), default=0)
    if warmup:
        axis.axvline(warmup + 0.5, color="grey", linestyle=":", linewidth=1)
        axis.text(warmup + 1, axis.get_ylim()[1], " warm-up ends", va="top", fontsize=8, color="grey")
    axis.set_xlabel("step")
    axis.set_ylabel(f"training loss (thick: {SMOOTHING}-step running mean)")
    axis.set_title("ava train ava256: loss by GPU count")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


# --- running -------------------------------------------------------------------------------------

def replicate(source: Path, target: Path, copies: int) -> int:
    """Makes `target` a dataset listing every capture of `source` `copies` times, as symlinks to
    its folders under new subject ids (RPL000, RPL001, ...); returns the number of captures.
    Every sample is still read and decoded from its archives, so loading costs what it would with
    distinct data, while the epochs get long enough for the loader's refill at each epoch start
    (one batch of data wait) not to weigh on the timings."""
    from ava.data.ids import CaptureId, format_ids_csv, read_ids_csv

    captures = read_ids_csv(source / "ids.csv")
    if copies * len(captures) > 1000:
        raise SystemExit(f"{copies} copies of {len(captures)} captures exceed the 1000 subject ids RPL000..RPL999")
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.iterdir():
        if stale.is_symlink():
            stale.unlink()
    listed = []
    for index in range(copies * len(captures)):
        capture = captures[index % len(captures)]
        copy = CaptureId(mcd=capture.mcd, mct=capture.mct, sid=f"RPL{index:03d}")
        (target / copy.folder).symlink_to((source / capture.folder).resolve(), target_is_directory=True)
        listed.append(copy)
    (target / "face_topology.obj").symlink_to((source / "face_topology.obj").resolve())
    (target / "ids.csv").write_text(format_ids_csv(listed))
    return len(listed)


def ensure_data(args) -> tuple[Path, int]:
    """(dataset folder, number of captures): --data as is when it has an ids.csv; otherwise a
    synthetic set generated once into DATA/synth and its --replicas copies in DATA/replicas."""
    from ava.data.ids import read_ids_csv

    data = Path(args.data).expanduser()
    if (data / "ids.csv").is_file():
        print(f"using the data in {data}", flush=True)
        return data, len(read_ids_csv(data / "ids.csv"))
    from ava.synth.config import SynthConfig
    from ava.synth.pipeline import ensure_generated, is_generated

    config = SynthConfig(n_ids=args.synth_ids, n_frames=args.synth_frames, n_cams=args.synth_cams,
                         texture_size=args.texture_size, downsample=args.image_downsample, overwrite=True)
    generated = data / "synth"
    if is_generated(generated, config):
        print(f"using the synthetic set in {generated}", flush=True)
    else:
        started = time.perf_counter()
        print(f"generating {args.synth_ids} x {args.synth_frames} x {args.synth_cams} synthetic images into "
              f"{generated} ({args.texture_size}^2 textures, sensor / {args.image_downsample})", flush=True)
        ensure_generated(generated, config, progress=False)
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    captures = replicate(generated, data / "replicas", args.replicas)
    print(f"{captures} captures ({args.replicas} copies of each generated one) in {data / 'replicas'}", flush=True)
    return data / "replicas", captures


def train_command(spec: RunSpec, args, data: Path, captures: int, run: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(spec.nproc),
            "-m", "ava", "train", "ava256", "--train.dataset-dir", str(data), "--train.data-csv", "ids.csv",
            "--train.nids", str(captures), "--train.maxiter", str(args.steps), "--train.num-epochs", str(NEVER),
            "--train.batchsize", str(spec.batch), "--train.warmup-iters", str(args.warmup_iters),
            "--train.num-holdout-cameras", "0", "--progress.output-path", str(run),
            "--progress.image-freq", str(NEVER), "--progress.checkpoint-freq", str(NEVER),
            "--progress.psnr-freq", str(NEVER), "--progress.psnr-samples", "1", "--progress.no-cross-id",
            "--device", args.device,
            *(["--train.ddp-bucket-mb", f"{spec.bucket_mb:g}"] if spec.bucket_mb is not None else []), *args.extra]


def environment() -> dict[str, str]:
    env = dict(os.environ, **NVLINK_MULTICAST_OFF)
    # The ava being measured: this checkout, whatever is installed.
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def process_tree(root: int) -> list[int]:
    """`root` and its descendants, children first (Linux /proc). torchrun starts each worker in
    a session of its own, so a process group does not reach them; parentage does."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])  # fields after "(comm)": state, ppid, ...
        children.setdefault(parent, []).append(int(entry.name))
    order, pending = [], [root]
    while pending:
        pid = pending.pop()
        order.append(pid)
        pending.extend(children.get(pid, []))
    return order[::-1]


def stop(process: subprocess.Popen) -> None:
    """Kills torchrun, its workers and their loader processes."""
    for pid in process_tree(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def last_step_logged(metrics: Path, steps: int) -> bool:
    try:
        records = read_steps(metrics)
    except FileNotFoundError:
        return False
    return bool(records) and records[-1]["step"] >= steps


def launch(spec: RunSpec, args, data: Path, captures: int) -> RunSummary | str:
    """Runs one training until its last step is logged; its summary, or why it failed.

    The run is stopped once metrics.jsonl has its last step: what `ava train` does after it (an
    evaluation, whose eval-mode graphs torch.compile would compile first, pictures, a 0.6 GB
    checkpoint) measures nothing here and would only add minutes."""
    run = Path(args.out) / spec.name
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    command = train_command(spec, args, data, captures, run)
    print(f"run {spec.name}: {spec.nproc} process{'es' if spec.nproc > 1 else ''} x batch {spec.batch}", flush=True)
    log_path = run.parent / f"{spec.name}.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment())
        status = None
        try:
            while status is None:
                if last_step_logged(run / "metrics.jsonl", args.steps):
                    stop(process)
                    status = 0
                elif time.perf_counter() - started > args.run_timeout:
                    stop(process)
                    return f"stopped after --run-timeout {args.run_timeout:g} s; see {log_path}"
                else:
                    time.sleep(0.5)
                    status = process.poll()
        finally:
            if process.poll() is None:  # interrupted: leave no GPU processes behind
                stop(process)
    wall = time.perf_counter() - started
    if status != 0 or not last_step_logged(run / "metrics.jsonl", args.steps):
        tail = log_path.read_text().splitlines()[-15:]
        return f"exit status {status} after {wall:.0f} s; end of {log_path}:\n  " + "\n  ".join(tail)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)  # a partial one, if any
    summary = summarise(spec, read_steps(run / "metrics.jsonl"), args.skip)
    summary.wall_s = wall
    config = json.loads((run / "config.json").read_text())
    summary.num_workers = config.get("resolved", {}).get("num_workers")
    print(f"  {wall:.0f} s: {summary.samples_per_s:.1f} samples/s, step {summary.step_ms:.1f} ms", flush=True)
    return summary


def host_description(device: str) -> str:
    import torch

    parts = [f"{platform.node()}", f"{os.cpu_count()} CPU cores", f"torch {torch.__version__}"]
    if device == "cuda" and torch.cuda.is_available():
        parts.insert(1, f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
        nccl = torch.cuda.nccl.version() if hasattr(torch.cuda, "nccl") else None
        if nccl:
            parts.append("NCCL " + ".".join(str(part) for part in nccl))
    return ", ".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=None, help="GPUs to scale to (default: every visible GPU)")
    parser.add_argument("--counts", default=None, help="comma-separated GPU counts to run (default: 1..nproc)")
    parser.add_argument("--per-gpu-batch", type=int, default=4, help="batch per GPU (ava256: 4)")
    parser.add_argument("--no-same-global-batch", action="store_true",
                        help="skip the 1-GPU run at the largest run's global batch")
    parser.add_argument("--bucket-mb", default=None,
                        help="comma-separated DDP bucket sizes (MB) to run the largest GPU count with as well")
    parser.add_argument("--steps", type=int, default=120, help="steps per run")
    parser.add_argument("--warmup-iters", type=int, default=40, help="warm-up steps of each run (ava256: 100)")
    parser.add_argument("--skip", type=int, default=50, help="steps left out of the timings (start-up, warm-up)")
    parser.add_argument("--data", default="/tmp/ava-bench-scaling/data", help="dataset folder (generated if empty)")
    parser.add_argument("--out", default="/tmp/ava-bench-scaling/runs", help="run folders, logs, plot, summary")
    parser.add_argument("--json", default=None, help="also write the summary here")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--synth-ids", type=int, default=2)
    parser.add_argument("--synth-frames", type=int, default=4)
    parser.add_argument("--synth-cams", type=int, default=4)
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--image-downsample", type=int, default=8, help="synthetic images: sensor / this")
    parser.add_argument("--replicas", type=int, default=None,
                        help="copies of each generated capture in the training set, for long epochs "
                             "(default: 8 x nproc)")
    parser.add_argument("--run-timeout", type=float, default=300, help="seconds one run may take")
    args = parser.parse_args(argv)
    args.extra = extra
    if args.nproc is None:
        if args.device == "cpu":
            parser.error("--nproc is required with --device cpu")
        import torch

        args.nproc = torch.cuda.device_count()
        if args.nproc < 1:
            parser.error("no CUDA device is visible; pass --device cpu --nproc N to run on the CPU")
    if args.nproc < 1:
        parser.error("--nproc must be at least 1")
    if args.per_gpu_batch < 1 or args.steps < 1 or args.warmup_iters < 0 or args.skip < 0:
        parser.error("--per-gpu-batch and --steps must be at least 1, --warmup-iters and --skip at least 0")
    if args.synth_ids < 2:
        parser.error("--synth-ids must be at least 2 (normalisation statistics need two different captures)")
    args.replicas = 8 * args.nproc if args.replicas is None else args.replicas
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    if args.skip >= args.steps:
        parser.error(f"--skip {args.skip} leaves none of the {args.steps} steps to time")
    try:
        args.counts = [int(part) for part in args.counts.split(",")] if args.counts else None
        args.bucket_mb = [float(part) for part in args.bucket_mb.split(",")] if args.bucket_mb else []
        if any(not size > 0 for size in args.bucket_mb):
            raise ValueError(f"--bucket-mb sizes must be positive, got {args.bucket_mb}")
        args.runs = plan_runs(args.nproc, args.per_gpu_batch, args.counts, not args.no_same_global_batch,
                              args.bucket_mb)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(NVLINK_MULTICAST_OFF)
    started = time.perf_counter()
    data, captures = ensure_data(args)
    summaries, failures = [], {}
    for spec in args.runs:
        result = launch(spec, args, data, captures)
        if isinstance(result, str):
            failures[spec.name] = result
            print(f"  failed: {result}", flush=True)
        else:
            summaries.append(result)
    add_efficiency(summaries)
    out = Path(args.out)
    print()
    print(host_description(args.device))
    workers = sorted({summary.num_workers for summary in summaries if summary.num_workers is not None})
    print(f"ava train ava256, {args.steps} steps ({args.warmup_iters} warm-up), timings over steps {args.skip + 1}.."
          f"{args.steps}; loader workers per process: {', '.join(map(str, workers)) or '?'}")
    print()
    print(format_table(summaries))
    print()
    comparison = None
    multi = [s for s in summaries if s.spec.nproc > 1 and s.spec.batch == args.per_gpu_batch and s.spec.bucket_mb is None]
    if multi:
        largest = max(multi, key=lambda summary: summary.spec.nproc)
        single = next((s for s in summaries if s.spec.nproc == 1 and s.spec.global_batch == largest.spec.global_batch),
                      None)
        if single is not None:
            comparison = compare_curves(single, largest)
            print(describe_comparison(comparison))
    plot = plot_curves(summaries, out / "loss_curves.png") if summaries else None
    print(f"loss curves: {plot}" if plot else "loss curves: not drawn (pip install matplotlib)")
    for name, reason in failures.items():
        print(f"run {name} failed: {reason}")
    print(f"total {time.perf_counter() - started:.0f} s")
    summary = {"host": host_description(args.device), "args": {key: value for key, value in vars(args).items()
                                                                 if key != "runs"},
               "runs": [{**asdict(s), "losses": s.losses} for s in summaries], "comparison": comparison,
               "failures": failures}
    text = json.dumps(summary, indent=1, default=str)
    (out / "summary.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
