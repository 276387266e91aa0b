"""Setting up a run, in the order `setup` does it: data, model with optimiser and schedule,
resume, loader, run folder. The result is a `Trainer`, everything the loop and the periodic
actions need."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console

from ava.errors import UserError
from ava.runtime.datasets import demo_dataset_dir, ensure_demo_dataset
from ava.runtime.device import use_threads
from ava.train.config import TrainConfig, config_to_dict
from ava.train.data import (EpochSampler, TrainingData, build_training_data, default_num_workers, ids_csv_path,
                            make_loader, select_subjects)
from ava.train.ddp import DdpPlan, plan_ddp, probe_graph, wrap_ddp
from ava.train.distributed import Distributed
from ava.runtime.rundir import RunDir, load_for_resume, refuse_earlier_run
from ava.train.resume import check_compatible, restore_rng
from ava.train.schedule import make_scheduler, set_learning_rate


@dataclass
class TrainingState:
    """What a step changes and a checkpoint keeps."""

    model: torch.nn.Module
    """The autoencoder (its parameters are the optimiser's; checkpoints save it)."""
    network: torch.nn.Module
    """What a step calls: the model, or its DistributedDataParallel wrapper."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    step: int = 0
    """Completed optimiser steps."""


@dataclass
class Trainer:
    """One run, set up: config, data, state, outputs and the loader."""

    config: TrainConfig
    ctx: Distributed
    console: Console
    data: TrainingData
    ids_csv: Path
    topology: object  # ava.nn.uvmap.Topology
    backend: str | None
    """Raymarch backend passed to the model (None: the model picks)."""
    state: TrainingState
    start_step: int
    resumed_from: Path | None
    run: RunDir | None
    """The run folder's writer (rank 0 only)."""
    resolved: dict
    """The config with what was resolved at start (stored in config.json and checkpoints)."""
    cross_identity: object | None  # ava.train.pictures.CrossIdentity
    sampler: EpochSampler
    loader: torch.utils.data.DataLoader
    steps_per_epoch: int
    last_step: int
    vertmean: torch.Tensor
    """The dataset's mean mesh [V,3] (mm) on the training device."""
    threads: int
    """torch's CPU threads in this process."""
    generation_seconds: float = 0.0
    """Wall-clock seconds spent generating the demo data before training (0 when it was there)."""

    def say(self, *args, **kwargs) -> None:
        """Prints on rank 0 only; a long line stays one line (rich would otherwise break it at 80
        columns when stderr is a log file, as under a cluster scheduler)."""
        if self.ctx.is_main:
            kwargs.setdefault("soft_wrap", True)
            self.console.print(*args, **kwargs)


def check_config(config: TrainConfig) -> None:
    """Refuses values that cannot work, all problems in one line."""
    train, progress = config.train, config.progress
    problems = []
    for name in ("maxiter", "num_epochs", "batchsize", "downsample", "lr_scheduler_iter"):
        if getattr(train, name) < 1:
            problems.append(f"--train.{name.replace('_', '-')} must be at least 1")
    if train.readback_every is not None and train.readback_every < 1:
        problems.append("--train.readback-every must be at least 1")
    if (train.num_workers or 0) < 0 or train.warmup_iters < 0 or train.num_holdout_cameras < 0:
        problems.append("--train.num-workers, --train.warmup-iters and --train.num-holdout-cameras cannot be negative")
    if train.num_holdout_subjects < 0 or train.num_validation_subjects < 0:
        problems.append("--train.num-holdout-subjects and --train.num-validation-subjects cannot be negative")
    if not train.ddp_bucket_mb > 0:
        problems.append("--train.ddp-bucket-mb must be positive")
    if not train.init_learning_rate > 0 or not train.gamma > 0 or not train.clip > 0:
        problems.append("--train.init-learning-rate, --train.gamma and --train.clip must be positive")
    for name in ("image_freq", "checkpoint_freq", "psnr_freq"):
        if getattr(progress, name) < 1:
            problems.append(f"--progress.{name.replace('_', '-')} must be at least 1")
    if progress.tensorboard.log_freq < 1:
        problems.append("--progress.tensorboard.log-freq must be at least 1")
    if problems:
        raise UserError("; ".join(problems))
    if config.train.dataset_dir is None and config.preset != "demo":
        raise UserError(f"the {config.preset} preset trains on the Ava-256 captures: pass --train.dataset-dir DIR "
                        "(`ava download -o DIR` fetches them); `ava train` alone trains the demo on synthetic data")


def check_run_folder(config: TrainConfig, writer: bool = True) -> None:
    """Refuses to train into a folder holding an earlier run, unless --resume continues it or
    --progress.overwrite replaces it, and (checked by the `writer`, rank 0) into one that cannot
    be written."""
    refuse_earlier_run(config.progress.output_path, config.resume, config.progress.overwrite, probe=writer)


ELASTIC_RESTART_ENV = "TORCHELASTIC_RESTART_COUNT"


def resume_restarted_attempt(config: TrainConfig, say: Callable) -> TrainConfig:
    """`config` with --resume auto when torchrun restarted the workers (--max-restarts) after a
    process failed: the restarted attempt continues from the run folder's newest checkpoint
    instead of refusing the folder that the first attempt wrote."""
    try:
        attempt = int(os.environ.get(ELASTIC_RESTART_ENV, "0") or 0)
    except ValueError:
        attempt = 0
    if attempt < 1 or config.resume:
        return config
    say(f"torchrun restarted the workers (restart {attempt}): continuing with --resume auto", highlight=False)
    return dataclasses.replace(config, resume="auto")


def local_processes(ctx: Distributed) -> int:
    """Training processes on this machine (torchrun's LOCAL_WORLD_SIZE), which share its cores."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "") or ctx.world_size))
    except ValueError:
        return ctx.world_size


# --- data ---------------------------------------------------------------------------------------

def resolve_dataset(config: TrainConfig, ctx: Distributed, console: Console) -> tuple[Path, float]:
    """(--train.dataset-dir, else the demo synthetic set, which rank 0 generates once while the
    others wait; the seconds spent generating it, 0 when it was there)."""
    if config.train.dataset_dir is not None:
        path = Path(config.train.dataset_dir).expanduser()
        if not path.is_dir():
            raise UserError(f"--train.dataset-dir {path} does not exist; download captures with `ava download` "
                            "or leave it out to train on the demo synthetic set")
        return path, 0.0
    path, seconds = None, 0.0
    if ctx.is_main:
        from ava.synth import MANIFEST_FILENAME

        target = demo_dataset_dir(config.synth)
        there = (target / MANIFEST_FILENAME).is_file()  # written last, once the set is complete
        console.print(f"demo data: synthetic captures in {target}" + (" (generated once)" if not there else ""),
                      highlight=False, soft_wrap=True)
        started = time.perf_counter()
        path = ensure_demo_dataset(config.synth, progress=True)
        if not there:
            seconds = time.perf_counter() - started
            console.print(f"demo data: generated in {seconds:.0f} s", highlight=False)
    ctx.barrier()  # the other ranks wait until rank 0 has generated the set
    return Path(ctx.broadcast_object(str(path) if path else None)), seconds


def load_data(config: TrainConfig, ctx: Distributed, console: Console, say: Callable):
    """(training data, ids CSV, mesh topology, seconds spent generating the demo data) of the
    selected captures."""
    from ava.data.ids import read_ids_csv
    from ava.nn.topology import resolve_topology

    dataset_dir, generation_seconds = resolve_dataset(config, ctx, console)
    csv = ids_csv_path(dataset_dir, config.train.data_csv)
    captures, split = select_subjects(read_ids_csv(csv), config.train, str(csv))
    data = build_training_data(dataset_dir, captures, config.train.downsample, config.train.holdout_cameras,
                               config.train.num_holdout_cameras, progress=ctx.is_main, cameras=config.train.cameras,
                               split=split, holdout_segments=config.train.holdout_segments)
    topology = resolve_topology(config.model.topology, dataset_dir)
    if topology.num_verts != data.stats.vertmean.shape[0]:
        raise UserError(f"the topology has {topology.num_verts} vertices but the dataset's meshes have "
                        f"{data.stats.vertmean.shape[0]}; pass the dataset's topology with --model.topology")
    for line in data.describe():
        say(line, highlight=False, markup=False, soft_wrap=True)
    return data, csv, topology, generation_seconds


# --- model, optimiser, schedule -----------------------------------------------------------------

def raymarch_backend(config: TrainConfig, device: torch.device) -> str | None:
    backend = None if config.raymarch_backend == "auto" else config.raymarch_backend
    if backend is None and device.type == "cpu":
        backend = "torch"  # the Triton interpreter (TRITON_INTERPRET=1) is far too slow to train with
    return backend


def build_state(config: TrainConfig, ctx: Distributed, data: TrainingData, topology, backend: str | None) -> TrainingState:
    """A fresh model on the device, Adam and the schedule, at step 0 (not yet wrapped for DDP)."""
    from ava.nn.autoencoder import build_autoencoder

    stats = data.stats
    model = build_autoencoder(config.model, topology, vertmean=torch.from_numpy(stats.vertmean),
                              vertstd=stats.vertstd, num_cameras=len(data.cameras),
                              num_identities=len(data.captures), raymarch_backend=backend).to(ctx.device)
    optimizer = make_optimizer(model, config.train, ctx.device)
    return TrainingState(model=model, network=model, optimizer=optimizer,
                         scheduler=make_scheduler(optimizer, config.train))


def make_optimizer(model: torch.nn.Module, train, device: torch.device) -> torch.optim.Adam:
    """`ava train`'s Adam for `model` (train: the TrainSection)."""
    # On a GPU, the fused kernel updates all parameters in a few launches instead of ~10 per
    # tensor (same update rule; the CPU keeps the default so resumed CPU runs stay bit-exact).
    return torch.optim.Adam(model.parameters(), lr=train.init_learning_rate, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0, fused=True if device.type == "cuda" else None)


# --- resume -------------------------------------------------------------------------------------

def restore(config: TrainConfig, ctx: Distributed, state: TrainingState, data: TrainingData, topology,
            say: Callable) -> Path | None:
    """Continues from --resume (everything) or initialises from --train.checkpoint (weights only);
    returns the checkpoint resumed from, if any. Sets state.step and the learning rate."""
    from ava.checkpoint import load_checkpoint

    checkpoint = load_for_resume(config.resume, config.progress.output_path, load_checkpoint, say)
    path = checkpoint.path if checkpoint is not None else None
    if checkpoint is not None:
        check_compatible(checkpoint, config, data, topology)
        checkpoint.restore_model(state.model)
        checkpoint.restore_optimizer(state.optimizer)
        if checkpoint.scheduler_state is not None:
            state.scheduler.load_state_dict(checkpoint.scheduler_state)
        state.step = checkpoint.step
        restore_rng(checkpoint.extra_state, ctx, say)
        say(f"resuming from {path} at step {state.step}", highlight=False)
    elif config.train.checkpoint:
        checkpoint = load_checkpoint(config.train.checkpoint)
        check_compatible(checkpoint, config, data, topology)
        checkpoint.restore_model(state.model)
        say(f"initialised the weights from {config.train.checkpoint} (step, optimiser and schedule start fresh)")
    # Parameters saved by the checkpoint live on the CPU until moved; Adam's state follows them.
    state.model.to(ctx.device)
    set_learning_rate(state.optimizer, config.train, state.step)
    return path


def plan_distributed(config: TrainConfig, ctx: Distributed, state: TrainingState, data: TrainingData,
                     vertmean: torch.Tensor) -> DdpPlan:
    """Which parameters and buffers DDP must handle (ava.train.ddp), from one training forward per
    phase this run will go through, on its first training sample."""
    from ava.data.collate import collate
    from ava.runtime.batch import to_device
    from ava.train.losses import total_loss
    from ava.train.step import decoder_terms

    batch = to_device(collate([data.train[0]]), ctx.device)

    def loss_of(warm: bool) -> torch.Tensor:
        _, terms = decoder_terms(state.model, batch, warm=warm, vertmean=vertmean, vertstd=data.stats.vertstd)
        return total_loss(terms, config.train.losses)

    warmup = config.train.warmup_iters
    phases = [phase for phase, happens in ((True, state.step < warmup), (False, config.train.maxiter > warmup))
              if happens] or [False]  # none: the run has no step left, the plan is never used
    return plan_ddp(probe_graph(state.model, loss_of, phases, ctx.device), config.train.ddp_bucket_mb)


def prepare_network(config: TrainConfig, ctx: Distributed, state: TrainingState, data: TrainingData,
                    vertmean: torch.Tensor, say: Callable) -> DdpPlan | None:
    """Sets the precision, plans DDP when there are several ranks (before compiling: the probe's
    batch of one would otherwise be compiled for), compiles what --compile asks for and wraps
    the model for DDP. Returns the DDP plan (None for one process)."""
    from ava.nn.precision import configure_tensor_cores

    configure_tensor_cores(config.train.precision)
    state.model.set_precision(config.train.precision)
    plan = plan_distributed(config, ctx, state, data, vertmean) if ctx.enabled else None
    if should_compile(config, ctx.device):
        # tools/bench_train_step.py on an H200 (BENCHMARKS.md): compiling the encoders, the
        # decoder assembler and the background model separately fuses the weight-norm, activation
        # and skip ops (4300 -> 2200 kernel launches) and took the ava256 step from 131 to 95 ms;
        # compiling the whole model graph-breaks at the raymarcher and was slower. In place, so
        # parameter names do not change.
        compile_parts(state.model)
        say(f"compiling {', '.join(COMPILED_PARTS)} with torch.compile (the first steps are slow)")
    state.network = state.model
    if plan is not None:
        state.network = wrap_ddp(state.model, ctx, plan)
        say(plan.describe(state.model), highlight=False)
    return plan


COMPILED_PARTS = ("id_encoder", "expr_encoder", "decoder_assembler", "bgmodel")
# --compile auto compiles from this UV size up: measured at 1024 (ava256), where it gains 1.4x; a
# 1000-step demo-size run on an H200 spent more time compiling (about 4 minutes over its
# warm-up, evaluation and training graphs) than the whole run otherwise takes.
COMPILE_MIN_UV_SIZE = 1024


def compile_parts(model: torch.nn.Module) -> None:
    """torch.compile each of COMPILED_PARTS in place (parameter names do not change)."""
    for name in COMPILED_PARTS:
        getattr(model, name).compile()


def step_setup(config: TrainConfig, device: torch.device, distributed: bool = False) -> dict:
    """How `ava train` with `config` runs its steps on `device`: {"precision", "fused_adam",
    "compile_parts", "step_mode"} (tools/bench_train_step.py's `default` variant is this)."""
    from ava.train.runner import resolve_step_mode

    return {"precision": config.train.precision, "fused_adam": device.type == "cuda",
            "compile_parts": should_compile(config, device),
            "step_mode": resolve_step_mode(config.train.step_mode, device, distributed)}


def should_compile(config: TrainConfig, device: torch.device) -> bool:
    """Whether prepare_network compiles the model's parts (see TrainConfig.compile)."""
    if config.compile != "auto":
        return config.compile == "on"
    return device.type == "cuda" and config.model.uv_size >= COMPILE_MIN_UV_SIZE


# --- run folder ---------------------------------------------------------------------------------

def resolved_config(config: TrainConfig, ctx: Distributed, data: TrainingData, csv: Path,
                    backend: str | None, num_workers: int, plan: DdpPlan | None) -> dict:
    """The config plus what was resolved at start: dataset, captures, cameras, device, backend,
    loader workers and the DDP plan."""
    resolved = config_to_dict(config)
    resolved["resolved"] = {"dataset_dir": str(data.dataset_dir), "ids_csv": str(csv),
                            "captures": [capture.folder for capture in data.captures], "cameras": data.cameras,
                            "holdout_cameras": data.holdout_cameras,
                            "holdout_subjects": {"validation": list(data.split.validation), "test": list(data.split.test),
                                                 "split_seed": data.split.seed} if data.split is not None else None,
                            "holdout_segments": data.holdout_segments, "world_size": ctx.world_size,
                            "global_batch": config.train.batchsize * ctx.world_size,
                            "device": str(ctx.device), "raymarch_backend": backend or "auto",
                            "num_workers": num_workers, "ddp": plan.to_dict() if plan is not None else None}
    return resolved


def open_run_folder(config: TrainConfig, ctx: Distributed, resolved: dict, resume_step: int | None,
                    say: Callable) -> RunDir | None:
    """Rank 0's run folder with config.json written and the metrics log (and TensorBoard) open."""
    if not ctx.is_main:
        return None
    run = RunDir(config.progress.output_path)
    if config.progress.overwrite and not resume_step:
        run.clear(config.progress.tensorboard.logdir)
    run.write_config(resolved)
    run.open_metrics(resume_step)
    if run.open_tensorboard(config.progress.tensorboard.logdir, {
        "minibatch": config.train.batchsize, "global batch": config.train.batchsize * ctx.world_size,
        "lr": config.train.init_learning_rate, "optimiser": "Adam"}):
        say(f"TensorBoard events in {run.root / config.progress.tensorboard.logdir}", highlight=False)
    return run


# --- loader -------------------------------------------------------------------------------------

def loader_workers(config: TrainConfig, ctx: Distributed) -> int:
    """--train.num-workers, or the automatic count for this rank's share of the node's cores."""
    if config.train.num_workers is not None:
        return config.train.num_workers
    return default_num_workers(local_processes(ctx))


def build_loader(config: TrainConfig, ctx: Distributed, data: TrainingData, num_workers: int,
                 say: Callable = lambda *args, **kwargs: None):
    """(sampler, loader, steps per epoch, last step): the resumable order over the training set."""
    sampler = EpochSampler(len(data.train), ctx.rank, ctx.world_size, config.seed)
    steps_per_epoch = sampler.per_rank // config.train.batchsize
    if steps_per_epoch < 1:
        spread = f" over {ctx.world_size} processes" if ctx.world_size > 1 else ""
        raise UserError(f"{len(data.train)} training samples{spread} do not fill one batch of "
                        f"{config.train.batchsize}; lower --train.batchsize")
    last_step = min(config.train.maxiter, config.train.num_epochs * steps_per_epoch)
    from ava.train.extras import training_dataset

    loader = make_loader(training_dataset(config, data.train, say), sampler, config.train.batchsize, num_workers,
                         pin_memory=ctx.device.type == "cuda")
    return sampler, loader, steps_per_epoch, last_step


def setup(config: TrainConfig, ctx: Distributed, console: Console) -> Trainer:
    """Everything before the first step (seeds, threads, data, state, resume, outputs, loader)."""
    from ava.train.pictures import CrossIdentity

    # One line per message even in a log file (see Trainer.say).
    say = functools.partial(console.print, soft_wrap=True) if ctx.is_main else (lambda *args, **kwargs: None)
    threads = use_threads(config.threads, processes=local_processes(ctx))
    torch.manual_seed(config.seed * 1000 + ctx.rank)

    config = resume_restarted_attempt(config, say)
    check_run_folder(config, writer=ctx.is_main)
    data, csv, topology, generation_seconds = load_data(config, ctx, console, say)
    backend = raymarch_backend(config, ctx.device)
    state = build_state(config, ctx, data, topology, backend)
    resumed_from = restore(config, ctx, state, data, topology, say)
    vertmean = torch.from_numpy(data.stats.vertmean).to(ctx.device)
    plan = prepare_network(config, ctx, state, data, vertmean, say)
    num_workers = loader_workers(config, ctx)
    sampler, loader, steps_per_epoch, last_step = build_loader(config, ctx, data, num_workers, say)
    if config.train.num_workers is None:
        say(f"data: {num_workers} loader workers per process (--train.num-workers to change)", highlight=False)

    # The run folder is touched only once everything above has been checked.
    resolved = resolved_config(config, ctx, data, csv, backend, num_workers, plan)
    # A resume without a checkpoint (--resume auto in a run stopped before its first one) still
    # appends to the run's log, from step 0.
    resume_step = state.step if resumed_from is not None else (0 if config.resume else None)
    run = open_run_folder(config, ctx, resolved, resume_step, say)
    cross_identity = None
    if ctx.is_main and config.progress.cross_id and len(data.captures) > 1:
        cross_identity = CrossIdentity(data.train, min(config.progress.cross_id_n_subjects, len(data.captures) - 1))
    return Trainer(config=config, ctx=ctx, console=console, data=data, ids_csv=csv, topology=topology,
                   backend=backend, state=state, start_step=state.step, resumed_from=resumed_from, run=run,
                   resolved=resolved, cross_identity=cross_identity, sampler=sampler, loader=loader,
                   steps_per_epoch=steps_per_epoch, last_step=last_step,
                   vertmean=vertmean, threads=threads, generation_seconds=generation_seconds)
