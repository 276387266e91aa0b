"""`ava train-driver`: regression of the headset encoder onto a frozen decoder's expression codes,
alternating with time alignment of the headset and dome takes (docs/driver.md).

Per step: a batch of headset frames of the training subjects (augmented), the encoder's codes,
and the mean squared error, in the standard units of the training codes, against the code of
the dome frame each headset frame is currently aligned to. The targets start as a linear time
stretch of every segment; every --train.align-every steps each segment is re-aligned by DTW
between the encoder's codes of its headset frames and the decoder's codes of its dome frames.
A resume restores the encoder, the optimiser, the alignment, the step and the RNG state, and
batches and augmentation are drawn from per-step seeds, so it reproduces an unbroken run.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console

from ava.console import make_console
from ava.driver.config import DriverConfig
from ava.driver.release_targets import apply_targets
from ava.driver.setup import check_config, check_resumable, learning_rate, prepare
from ava.driver.state import DriverState
from ava.errors import UserError

# The targets that re-alignment revises (the others are fixed: a stretch, the truth, encodings).
REALIGNED = ("aligned", "expression-codes")


def train_driver(config: DriverConfig) -> int:
    """Runs `ava train-driver`; returns the exit status."""
    from ava.runtime.device import select_device, use_threads
    from ava.runtime.rundir import refuse_earlier_run

    check_config(config)
    console = make_console()
    device = select_device(config.device)
    use_threads(config.threads)
    refuse_earlier_run(config.progress.output_path, config.resume, config.progress.overwrite)
    torch.manual_seed(config.seed)
    try:
        return _train(config, device, console)
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"CUDA ran out of memory at --train.batchsize {config.train.batchsize}; lower it or "
                        "--encoder.image-size") from None


def _train(config: DriverConfig, device: torch.device, console: Console) -> int:
    from ava.checkpoint import load_driver_checkpoint
    from ava.faults import crash_point
    from ava.runtime.interrupt import INTERRUPTED, StopRequest
    from ava.runtime.rundir import RunDir, load_for_resume

    started = time.perf_counter()
    setup = prepare(config, device, console)
    targets = apply_targets(config.train.targets, setup, console)
    pool = setup.train_pool
    if len(pool) == 0:
        raise UserError("the training subjects have no headset frame in a segment their dome session also has")
    state = DriverState(config, setup, device, _resolved_config(config, setup, device, targets))

    checkpoint = load_for_resume(config.resume, config.progress.output_path, load_driver_checkpoint, console.print)
    resume_from = checkpoint.path if checkpoint is not None else None
    if checkpoint is not None:
        _restore(state, checkpoint, console)

    run = state.run = RunDir(config.progress.output_path)
    # A resume without a checkpoint (--resume auto in a run stopped before its first one) still
    # appends to the run's log, from step 0.
    resume_step = state.step if resume_from is not None else (0 if config.resume else None)
    if config.progress.overwrite and not resume_step:
        run.clear("log", pictures=("driven",))
    run.write_config(state.resolved)
    run.open_metrics(resume_step)
    last = config.train.maxiter
    console.print(f"training the headset driver {last - state.step} steps (to step {last}) on {device}: "
                  f"{len(pool)} headset frames of {len(pool.subjects)} subjects, batch {config.train.batchsize}"
                  + (f", {len(state.folds)} cross-fitting folds" if state.folds else ""), highlight=False)
    if state.step >= last:
        console.print(f"nothing to do: the run is already at step {state.step} of {last}")
        run.close()
        return 0

    loader = _loader(config, state)
    progress = _progress_bar(console)
    task = progress.add_task("driver", total=last, completed=state.step, loss=float("nan"))
    line_every = max(1, (last - state.step) // 20)
    for encoder in state.encoders():
        encoder.train()
    progress.start()
    stop = StopRequest().install()  # Ctrl-C and SIGTERM finish the step and save (ava.runtime.interrupt)
    stopped = False
    try:
        fetch_started = time.perf_counter()
        for views, indices in loader:
            lr = learning_rate(config, state.step)
            value, grad_norm = _optimiser_step(state, views, indices, lr)
            state.step += 1
            crash_point("after-step", step=state.step)
            step_time = time.perf_counter() - fetch_started
            run.log({"step": state.step, "loss": value, "lr": lr, "grad_norm": grad_norm, "step_time": step_time,
                     "samples_per_s": len(indices) / step_time})
            progress.update(task, completed=state.step, loss=value)
            if not console.is_terminal and (state.step % line_every == 0 or state.step == last):
                console.print(f"step {state.step}/{last} loss {value:.3f} ({step_time:.2f} s/step)", highlight=False)
            final = state.step >= last
            _periodic(state, final, console)
            saved = state.step % config.progress.checkpoint_freq == 0 or final
            if saved:
                state.save()
            if stop.requested and not final:
                # Ctrl-C or SIGTERM: the step is done; its checkpoint makes --resume auto continue here.
                if not saved:
                    state.save()
                stopped = True
                break
            fetch_started = time.perf_counter()
    finally:
        stop.uninstall()
        progress.stop()
        run.close()
    if stopped:
        console.print(f"stopped by {stop.name()} at step {state.step} after {time.perf_counter() - started:.0f} s; "
                      f"checkpoint in {Path(config.progress.output_path) / 'checkpoints'}; continue with the same "
                      "command and --resume auto", highlight=False, soft_wrap=True)
        return INTERRUPTED
    console.print(f"done: step {state.step} in {time.perf_counter() - started:.0f} s; driver checkpoints in "
                  f"{Path(config.progress.output_path) / 'checkpoints'}", highlight=False)
    return 0


def _resolved_config(config: DriverConfig, setup, device: torch.device, targets: dict) -> dict:
    """The config as run.json and every checkpoint record it, with what was resolved at start."""
    from ava.runtime.rundir import json_ready

    pool = setup.train_pool
    resolved = json_ready(asdict(config))
    resolved["resolved"] = {
        "dataset_dir": str(setup.dataset_dir), "decoder": str(config.checkpoint), "decoder_fingerprint": setup.fingerprint,
        "train_subjects": [subject.folder for subject in pool.subjects],
        "holdout_subjects": [s.folder for s in setup.holdout_pool.subjects],
        "cameras": {s.folder: s.camera for s in pool.subjects + setup.holdout_pool.subjects},
        "downsample": setup.downsample, "device": str(device), "train_frames": len(pool),
        "holdout_frames": len(setup.holdout_pool), "targets": targets}
    return resolved


def _restore(state: DriverState, checkpoint, console: Console) -> None:
    """Encoders, optimiser, alignment, step and RNG from a checkpoint of this run."""
    pool = state.setup.train_pool
    check_resumable(checkpoint, state.setup, state.config, [subject.folder for subject in pool.subjects])
    state.encoder.load_state_dict({k: v.to(state.device) for k, v in checkpoint.encoder_state.items()})
    state.load_fold_state(checkpoint.extra_state)
    if checkpoint.optimizer_state is not None:
        state.optimizer.load_state_dict(checkpoint.optimizer_state)
    pool.targets = checkpoint.extra_state["alignment"].long().cpu()
    state.step = checkpoint.step
    if "rng.cpu" in checkpoint.extra_state:
        torch.set_rng_state(checkpoint.extra_state["rng.cpu"].to(torch.uint8).cpu())
    console.print(f"resuming from {checkpoint.path} at step {state.step}", highlight=False)


def _loader(config: DriverConfig, state: DriverState):
    """The training frames, one batch per remaining step (StepBatches: resumable)."""
    from torch.utils.data import DataLoader

    from ava.driver.data import StepBatches
    from ava.runtime.interrupt import ignore_stop_signals

    pool = state.setup.train_pool
    batches = StepBatches(len(pool), config.train.batchsize, config.seed, state.step, config.train.maxiter)
    workers = 0 if config.train.preload else config.train.num_workers
    # Its own generator: creating the loader's iterator draws a seed, which must not come from the
    # global RNG that dropout uses (a resumed run creates its iterator at another point).
    return DataLoader(pool, batch_sampler=batches, num_workers=workers, pin_memory=state.device.type == "cuda",
                      generator=torch.Generator().manual_seed(config.seed), worker_init_fn=ignore_stop_signals)


def _optimiser_step(state: DriverState, views: torch.Tensor, indices: torch.Tensor, lr: float) -> tuple[float, float]:
    """One AdamW step of the driver (and of the cross-fitting folds, each on the part of the batch
    outside its fold); returns the driver's loss and gradient norm."""
    from ava.driver.augment import augment_views

    config, device, pool = state.config, state.device, state.setup.train_pool
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    views = views.to(device, non_blocking=True)
    neutral = state.neutral_for(pool, indices)
    if neutral is not None:
        neutral = neutral.to(device)
    if config.train.augment:
        views = augment_views(views, torch.Generator().manual_seed(config.seed * 7_919 + state.step + 1))
        if neutral is not None:
            # Drawn apart from the frame's: the headset sits differently in the two frames.
            neutral = augment_views(neutral, torch.Generator().manual_seed(config.seed * 7_919 + state.step + 1 + 2**40))
    if neutral is not None:
        neutral = neutral.float()
    target = state.encoder.standardise(pool.codes[pool.targets[indices]].to(device))
    loss = ((state.encoder.standardise(state.encoder(views.float(), *_given(neutral))) - target) ** 2).mean()
    total = loss
    fold_of = torch.from_numpy(state.frame_fold)[indices]
    for number, fold in enumerate(state.folds):
        mine = torch.nonzero(fold_of != number).flatten().to(device)
        if len(mine):
            chosen = None if neutral is None else neutral[mine]
            predicted = fold(views[mine].float(), *_given(chosen))
            total = total + ((fold.standardise(predicted) - target[mine]) ** 2).mean()
    state.optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(state.encoder.parameters(), 10.0)
    for fold in state.folds:
        torch.nn.utils.clip_grad_norm_(fold.parameters(), 10.0)
    state.optimizer.step()
    return float(loss.detach()), float(grad_norm)


def _given(neutral: torch.Tensor | None) -> tuple:
    return () if neutral is None else (neutral,)


def _periodic(state: DriverState, final: bool, console: Console) -> None:
    """Re-alignment, the truth-free evaluation and the picture, each at its cadence (and the last
    two at the last step). Checkpoints are written by the loop itself."""
    from ava.runtime.images import save_png

    config, run = state.config, state.run
    # Also at the last step, so a checkpoint holds the alignment a longer run would continue with.
    if config.train.targets in REALIGNED and state.step % config.train.align_every == 0:
        record = state.realign()
        run.log(record)
        console.print(f"step {state.step}: re-aligned the headset takes ({100 * record['align_changed']:.0f}% "
                      f"of the frames changed dome frame)", highlight=False)
    if state.step % config.progress.eval_freq == 0 or final:
        record = state.evaluate()
        run.log(record)
        shown = ", ".join(f"{key} {value:.3f}" for key, value in record.items() if key.endswith("error")
                          or key.endswith("variance"))
        console.print(f"step {state.step}: {shown}", highlight=False)
    if state.step % config.progress.image_freq == 0 or final:
        picture = state.picture()
        if picture is not None:
            save_png(run.image_path("driven", state.step), picture)


def _progress_bar(console: Console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=console, transient=False, disable=not console.is_terminal)
