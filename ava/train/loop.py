"""The training loop (SPEC.md §6.3) with the original's defects fixed (SPEC.md §9 item 18):
the sampler changes order every epoch, maxiter ends the whole run, and a resume restores the
weights, optimiser, schedule, step, data position and RNG state.

Step numbering: `step` counts completed optimiser steps. Step index j (0-based) is a warm-up step
when j < warmup_iters; the learning rate at step index j is init * gamma^min(j // lr_scheduler_iter,
lr_scheduler_changes) (with one change this is exactly the original's schedule). A checkpoint
written after step s resumes at step index s.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from ava.errors import UserError
from ava.train.config import TrainConfig, config_to_dict
from ava.runtime.batch import to_device
from ava.runtime.datasets import demo_dataset_dir, ensure_demo_dataset
from ava.runtime.model import run_model
from ava.train.data import (EpochSampler, TrainingData, build_training_data, ids_csv_path, make_loader,
                            nonempty_batches, select_captures)
from ava.train.distributed import Distributed, setup_distributed
from ava.train.losses import LOSS_OUTPUTS, loss_terms, sanitise_gradients, total_loss
from ava.train.rundir import RunDir, find_latest_checkpoint

TERMS = ("irgbl1", "vertl1", "kldiv", "primvolsum")


def _check(config: TrainConfig) -> None:
    train, progress = config.train, config.progress
    problems = []
    for name in ("maxiter", "num_epochs", "batchsize", "downsample", "lr_scheduler_iter"):
        if getattr(train, name) < 1:
            problems.append(f"--train.{name.replace('_', '-')} must be at least 1")
    if train.num_workers < 0 or train.warmup_iters < 0 or train.num_holdout_cameras < 0:
        problems.append("--train.num-workers, --train.warmup-iters and --train.num-holdout-cameras cannot be negative")
    if not train.init_learning_rate > 0 or not train.gamma > 0 or not train.clip > 0:
        problems.append("--train.init-learning-rate, --train.gamma and --train.clip must be positive")
    for name in ("image_freq", "checkpoint_freq", "psnr_freq"):
        if getattr(progress, name) < 1:
            problems.append(f"--progress.{name.replace('_', '-')} must be at least 1")
    if progress.tensorboard.log_freq < 1:
        problems.append("--progress.tensorboard.log-freq must be at least 1")
    if problems:
        raise UserError("; ".join(problems))


def _learning_rate(config: TrainConfig, step_index: int) -> float:
    train = config.train
    return train.init_learning_rate * train.gamma ** min(step_index // train.lr_scheduler_iter, train.lr_scheduler_changes)


def _resolve_dataset(config: TrainConfig, ctx: Distributed, console: Console) -> Path:
    if config.train.dataset_dir is not None:
        path = Path(config.train.dataset_dir).expanduser()
        if not path.is_dir():
            raise UserError(f"--train.dataset-dir {path} does not exist; download captures with `ava download` "
                            "or leave it out to train on the demo synthetic set")
        return path
    path = None
    if ctx.is_main:
        target = demo_dataset_dir(config.synth)
        console.print(f"demo data: synthetic captures in {target} (generated once)", highlight=False)
        path = ensure_demo_dataset(config.synth, progress=True)
    ctx.barrier()  # the other ranks wait until rank 0 has generated the set
    return Path(ctx.broadcast_object(str(path) if path else None))


def _rng_state(ctx: Distributed) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG states (collective: all ranks call it at the same step)."""
    mine = {"cpu": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(ctx.device)
    states = {}
    for rank, state in enumerate(ctx.gather_objects(mine)):
        for kind, tensor in state.items():
            states[f"rng.{kind}.{rank}"] = tensor
    return states


def _restore_rng(extra: dict, ctx: Distributed, console: Console) -> None:
    cpu = extra.get(f"rng.cpu.{ctx.rank}")
    if cpu is None:
        if ctx.is_main:
            console.print("[yellow]note:[/] the checkpoint has no RNG state for this rank; seeding afresh")
        return
    torch.set_rng_state(cpu.to(torch.uint8).cpu())
    cuda = extra.get(f"rng.cuda.{ctx.rank}")
    if cuda is not None and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(cuda.to(torch.uint8).cpu(), ctx.device)


def _check_compatible(checkpoint, config: TrainConfig, data: TrainingData, topology) -> None:
    """A resumed or initialising checkpoint must have this run's model and index mappings."""
    problems = []
    saved_model = dict(checkpoint.config.get("model", {}))
    current_model = config_to_dict(config)["model"]
    for key in sorted(set(saved_model) | set(current_model)):
        if key != "topology" and saved_model.get(key) != current_model.get(key):
            problems.append(f"model.{key} is {saved_model.get(key)} there, {current_model.get(key)} here")
    identities = [capture.folder for capture in data.captures]
    if checkpoint.identities != identities:
        problems.append(f"identities {checkpoint.identities[:3]}... there, {identities[:3]}... here")
    if checkpoint.cameras != data.cameras:
        problems.append(f"{len(checkpoint.cameras)} cameras there, {len(data.cameras)} here")
    if tuple(checkpoint.topology.faces.shape) != tuple(topology.faces.shape) or \
            tuple(checkpoint.topology.verts.shape) != tuple(topology.verts.shape):
        problems.append("another mesh topology")
    if problems:
        raise UserError(f"checkpoint {checkpoint.path} comes from another configuration: " + "; ".join(problems)
                        + ". Resume with the flags it was trained with, or start a new --progress.output-path")


@dataclass
class _Meters:
    """Running sums for the console line between two log points."""

    loss: float = 0.0
    count: int = 0

    def add(self, value: float) -> None:
        self.loss += value
        self.count += 1

    def mean(self) -> float:
        return self.loss / max(self.count, 1)


def _gpu_utilisation(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # needs pynvml / NVML; absent on some machines
        return None


def train(config: TrainConfig) -> int:
    """Runs `ava train`; returns the exit status."""
    _check(config)
    ctx = setup_distributed(config.device)
    try:
        return _train(config, ctx)
    except torch.cuda.OutOfMemoryError:
        raise UserError(
            f"CUDA ran out of memory at --train.batchsize {config.train.batchsize} and --train.downsample "
            f"{config.train.downsample}; lower the batch size, raise the downsample or use a smaller --model"
        ) from None
    finally:
        ctx.close()


def _train(config: TrainConfig, ctx: Distributed) -> int:
    from ava.checkpoint import load_checkpoint, save_checkpoint
    from ava.data.bad_data import BadDataReport
    from ava.data.ids import read_ids_csv
    from ava.nn.autoencoder import build_autoencoder
    from ava.nn.topology import resolve_topology
    from ava.runtime.images import save_png
    from ava.runtime.metrics import holdout_psnr, training_view_psnr
    from ava.train.evaluate import CrossIdentity, progress_image

    console = Console(stderr=True)
    say = console.print if ctx.is_main else (lambda *args, **kwargs: None)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed * 1000 + ctx.rank)
    started = time.perf_counter()

    # --- data -----------------------------------------------------------------------------------
    dataset_dir = _resolve_dataset(config, ctx, console)
    csv = ids_csv_path(dataset_dir, config.train.data_csv)
    captures = select_captures(read_ids_csv(csv), config.train.ids, config.train.nids, str(csv))
    data = build_training_data(dataset_dir, captures, config.train.downsample, config.train.holdout_cameras,
                               config.train.num_holdout_cameras, progress=ctx.is_main, cameras=config.train.cameras)
    stats = data.stats
    topology = resolve_topology(config.model.topology, dataset_dir)
    if topology.num_verts != stats.vertmean.shape[0]:
        raise UserError(f"the topology has {topology.num_verts} vertices but the dataset's meshes have "
                        f"{stats.vertmean.shape[0]}; pass the dataset's topology with --model.topology")
    for line in data.describe():
        say(line, highlight=False, markup=False, soft_wrap=True)

    # --- model, optimiser, schedule -------------------------------------------------------------
    backend = None if config.raymarch_backend == "auto" else config.raymarch_backend
    if backend is None and ctx.device.type == "cpu":
        backend = "torch"  # the Triton interpreter (TRITON_INTERPRET=1) is far too slow to train with
    model = build_autoencoder(config.model, topology, vertmean=torch.from_numpy(stats.vertmean),
                              vertstd=stats.vertstd, num_cameras=len(data.cameras),
                              num_identities=len(captures), raymarch_backend=backend).to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.init_learning_rate, betas=(0.9, 0.999),
                                 eps=1e-8, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.train.lr_scheduler_iter,
                                                gamma=config.train.gamma)
    start_step = 0
    resume_path = None
    if config.resume:
        if config.resume == "auto":
            resume_path = find_latest_checkpoint(config.progress.output_path)
            if resume_path is None:
                say(f"--resume auto: no checkpoint in {config.progress.output_path}; starting a new run")
        else:
            resume_path = Path(config.resume).expanduser()
    if resume_path is not None:
        checkpoint = load_checkpoint(resume_path)
        _check_compatible(checkpoint, config, data, topology)
        checkpoint.restore_model(model)
        checkpoint.restore_optimizer(optimizer)
        if checkpoint.scheduler_state is not None:
            scheduler.load_state_dict(checkpoint.scheduler_state)
        start_step = checkpoint.step
        _restore_rng(checkpoint.extra_state, ctx, console)
        say(f"resuming from {resume_path} at step {start_step}", highlight=False)
    elif config.train.checkpoint:
        checkpoint = load_checkpoint(config.train.checkpoint)
        _check_compatible(checkpoint, config, data, topology)
        checkpoint.restore_model(model)
        say(f"initialised the weights from {config.train.checkpoint} (step, optimiser and schedule start fresh)")
    # Parameters saved by the checkpoint live on the CPU until moved; Adam's state follows them.
    model.to(ctx.device)
    for group in optimizer.param_groups:
        group["lr"] = _learning_rate(config, start_step)

    if config.compile:
        # What tools/compile_experiments.py found on an H100 (BENCHMARKS.md): compiling the decoder
        # assembler (mode "default") takes its forward+backward from 24.3 to 17.5 ms, while
        # compiling the whole model made the step slower (150 vs 128 ms); max-autotune gained
        # another 0.8 ms for 7x the compile time. In place, so parameter names do not change.
        model.decoder_assembler.compile()
        say("compiling the decoder assembler with torch.compile (the first steps are slow)")
    network = model
    if ctx.enabled:
        # Some parameters get no gradient in some steps (as in the original, which passes the same
        # flag), so DDP must look for them.
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=True)

    # --- run folder -----------------------------------------------------------------------------
    run = None
    resolved = config_to_dict(config)
    resolved["resolved"] = {"dataset_dir": str(dataset_dir), "ids_csv": str(csv),
                            "captures": [capture.folder for capture in captures], "cameras": data.cameras,
                            "holdout_cameras": data.holdout_cameras, "world_size": ctx.world_size,
                            "device": str(ctx.device), "raymarch_backend": backend or "auto"}
    if ctx.is_main:
        run = RunDir(config.progress.output_path)
        run.write_config(resolved)
        run.open_metrics(start_step if resume_path is not None else None)
        if run.open_tensorboard(config.progress.tensorboard.logdir, {
            "minibatch": config.train.batchsize, "global batch": config.train.batchsize * ctx.world_size,
            "lr": config.train.init_learning_rate, "optimiser": "Adam"}):
            say(f"TensorBoard events in {run.root / config.progress.tensorboard.logdir}", highlight=False)
    cross_identity = None
    if ctx.is_main and config.progress.cross_id and len(captures) > 1:
        cross_identity = CrossIdentity(data.train, min(config.progress.cross_id_n_subjects, len(captures) - 1))

    # --- loader -----------------------------------------------------------------------------------
    sampler = EpochSampler(len(data.train), ctx.rank, ctx.world_size, config.seed)
    steps_per_epoch = sampler.per_rank // config.train.batchsize
    if steps_per_epoch < 1:
        raise UserError(f"{len(data.train)} training samples over {ctx.world_size} processes do not fill one batch "
                        f"of {config.train.batchsize}; lower --train.batchsize")
    last_step = min(config.train.maxiter, config.train.num_epochs * steps_per_epoch)
    loader = make_loader(data.train, sampler, config.train.batchsize, config.train.num_workers,
                         pin_memory=ctx.device.type == "cuda")
    bad_data = BadDataReport(console=console if ctx.is_main else None)
    vertmean = torch.from_numpy(stats.vertmean).to(ctx.device)
    outputs = set(LOSS_OUTPUTS)

    def save(step: int) -> None:
        rng = _rng_state(ctx)  # collective
        if run is None:
            return
        path = save_checkpoint(
            run.checkpoint_path(step), model=model, optimizer=optimizer, scheduler_state=scheduler.state_dict(),
            stats=stats, topology=topology, identities=[capture.folder for capture in captures],
            cameras=data.cameras, config=resolved, step=step,
            extra_state={"epoch_steps": steps_per_epoch, "dataset_dir": str(dataset_dir),
                         "downsample": config.train.downsample, **rng},
        )
        run.mark_latest(path, config.progress.keep_checkpoints)

    def evaluate(step: int) -> None:
        if run is None:
            return
        model.eval()
        record: dict = {"step": step, "kind": "eval"}
        if data.holdout is not None:
            record.update(holdout_psnr(model, data.holdout, config.progress.psnr_samples, ctx.device, stats))
        record["psnr_train"] = training_view_psnr(model, data.train, min(config.progress.psnr_samples, 8), ctx.device)
        model.train()
        run.log(record)
        run.scalars(step, {f"eval/{key}": value for key, value in record.items() if key.startswith("psnr")})
        shown = ", ".join(f"{key} {value:.2f} dB" for key, value in record.items() if key.startswith("psnr"))
        say(f"step {step}: {shown}", highlight=False)

    def pictures(step: int, batch: dict, output: dict) -> None:
        if run is None:
            return
        save_png(run.image_path("progress", step), progress_image(batch["image"], output["irgbrec"]))
        if cross_identity is not None:
            model.eval()
            strip = cross_identity.strip(model, step, config.seed, ctx.device)
            model.train()
            if strip is not None:
                save_png(run.image_path("x-id", step), strip)

    # --- the loop ---------------------------------------------------------------------------------
    say(f"training {last_step - start_step} steps (to step {last_step}) on {ctx.device}"
        + (f" x {ctx.world_size} processes" if ctx.enabled else "") + f", batch {config.train.batchsize}"
        + (" per process" if ctx.enabled else ""), highlight=False)
    if start_step >= last_step:
        say(f"nothing to do: the run is already at step {start_step} of {last_step}")
        if run is not None:
            run.close()
        return 0
    progress = _progress_bar(console, ctx.is_main)
    task = progress.add_task("training", total=last_step, completed=start_step, loss=float("nan")) if progress else None
    line_every = max(1, (last_step - start_step) // 20)
    meters = _Meters()
    step = start_step
    nonfinite = 0
    model.train()
    if progress:
        progress.start()
    try:
        while step < last_step:
            epoch, offset = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch, offset * config.train.batchsize)
            fetch_started = time.perf_counter()
            for batch in nonempty_batches(loader):
                step_started = time.perf_counter()
                bad_data.update(batch)
                batch = to_device(batch, ctx.device)
                warm = step < config.train.warmup_iters
                output = run_model(network, batch, warm=warm, outputs=outputs)
                terms = loss_terms(output, batch, vertmean, stats.vertstd)
                loss = total_loss(terms, config.train.losses)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = sanitise_gradients(model.parameters(), config.train.clip)
                optimizer.step()
                if step + 1 <= config.train.lr_scheduler_iter * config.train.lr_scheduler_changes:
                    scheduler.step()
                step += 1

                logged = ctx.mean(torch.stack([loss.detach()] + [terms[name].detach() for name in TERMS]))
                values = logged.tolist()
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                now = time.perf_counter()
                step_time = now - fetch_started
                if not math.isfinite(values[0]):
                    nonfinite += 1
                record = {"step": step, "epoch": epoch, "loss": values[0],
                          **{name: value for name, value in zip(TERMS, values[1:])},
                          "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                          "warmup": warm, "step_time": step_time, "data_time": step_started - fetch_started,
                          "samples_per_s": config.train.batchsize * ctx.world_size / step_time}
                # NVML sampling costs a little; once every 10 steps is enough for a utilisation trace.
                utilisation = _gpu_utilisation(ctx.device) if step % 10 == 0 else None
                if utilisation is not None:
                    record["gpu_utilisation"] = utilisation
                if run is not None:
                    run.log(record)
                    if step % config.progress.tensorboard.log_freq == 0:
                        run.scalars(step, {"Total Loss": values[0], "lr": record["lr"],
                                           "step_time": step_time,
                                           **{f"loss/{name}": value for name, value in zip(TERMS, values[1:])}})
                meters.add(values[0])
                if progress:
                    progress.update(task, completed=step, loss=values[0])
                    if not console.is_terminal and (step % line_every == 0 or step == last_step):
                        console.print(f"step {step}/{last_step} loss {meters.mean():.3f} "
                                      f"({step_time:.2f} s/step, {record['samples_per_s']:.1f} samples/s)",
                                      highlight=False)
                        meters = _Meters()

                final = step >= last_step
                if step % config.progress.image_freq == 0 or final:
                    pictures(step, batch, output)
                if step % config.progress.psnr_freq == 0 or final:
                    evaluate(step)
                if step % config.progress.checkpoint_freq == 0 or final:
                    save(step)
                if final:
                    break
                fetch_started = time.perf_counter()
            bad_data.end_epoch(epoch)
    finally:
        if progress:
            progress.stop()
        if run is not None:
            run.close()
    if nonfinite:
        say(f"[yellow]warning:[/] {nonfinite} steps had a non-finite loss (their gradients were zeroed)")
    say(f"done: step {step} in {time.perf_counter() - started:.0f} s; checkpoints in "
        f"{Path(config.progress.output_path) / 'checkpoints'}", highlight=False)
    return 0


def _progress_bar(console: Console, enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=console, transient=False)
