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
    from ava.driver.augment import augment_views
    from ava.driver.data import StepBatches
    from ava.faults import crash_point
    from ava.runtime.images import save_png
    from ava.runtime.interrupt import INTERRUPTED, StopRequest, ignore_stop_signals
    from ava.runtime.rundir import RunDir, json_ready, load_for_resume

    started = time.perf_counter()
    setup = prepare(config, device, console)
    targets = apply_targets(config.train.targets, setup, console)
    pool = setup.train_pool
    if len(pool) == 0:
        raise UserError("the training subjects have no headset frame in a segment their dome session also has")
    train_subjects = [subject.folder for subject in pool.subjects]
    resolved = json_ready(asdict(config))
    resolved["resolved"] = {
        "dataset_dir": str(setup.dataset_dir), "decoder": str(config.checkpoint), "decoder_fingerprint": setup.fingerprint,
        "train_subjects": train_subjects, "holdout_subjects": [s.folder for s in setup.holdout_pool.subjects],
        "cameras": {s.folder: s.camera for s in pool.subjects + setup.holdout_pool.subjects},
        "downsample": setup.downsample, "device": str(device), "train_frames": len(pool),
        "holdout_frames": len(setup.holdout_pool), "targets": targets}
    state = DriverState(config, setup, device, resolved)

    checkpoint = load_for_resume(config.resume, config.progress.output_path, load_driver_checkpoint, console.print)
    resume_from = checkpoint.path if checkpoint is not None else None
    if checkpoint is not None:
        check_resumable(checkpoint, setup, config, train_subjects)
        state.encoder.load_state_dict({k: v.to(device) for k, v in checkpoint.encoder_state.items()})
        if checkpoint.optimizer_state is not None:
            state.optimizer.load_state_dict(checkpoint.optimizer_state)
        pool.targets = checkpoint.extra_state["alignment"].long().cpu()
        state.step = checkpoint.step
        if "rng.cpu" in checkpoint.extra_state:
            torch.set_rng_state(checkpoint.extra_state["rng.cpu"].to(torch.uint8).cpu())
        console.print(f"resuming from {resume_from} at step {state.step}", highlight=False)

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
                  f"{len(pool)} headset frames of {len(train_subjects)} subjects, batch {config.train.batchsize}",
                  highlight=False)
    if state.step >= last:
        console.print(f"nothing to do: the run is already at step {state.step} of {last}")
        run.close()
        return 0

    from torch.utils.data import DataLoader

    batches = StepBatches(len(pool), config.train.batchsize, config.seed, state.step, last)
    workers = 0 if config.train.preload else config.train.num_workers
    # Its own generator: creating the loader's iterator draws a seed, which must not come from the
    # global RNG that dropout uses (a resumed run creates its iterator at another point).
    loader = DataLoader(pool, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(config.seed), worker_init_fn=ignore_stop_signals)
    progress = _progress_bar(console)
    task = progress.add_task("driver", total=last, completed=state.step, loss=float("nan"))
    line_every = max(1, (last - state.step) // 20)
    state.encoder.train()
    progress.start()
    stop = StopRequest().install()  # Ctrl-C and SIGTERM finish the step and save (ava.runtime.interrupt)
    stopped = False
    try:
        fetch_started = time.perf_counter()
        for views, indices in loader:
            lr = learning_rate(config, state.step)
            for group in state.optimizer.param_groups:
                group["lr"] = lr
            views = views.to(device, non_blocking=True)
            if config.train.augment:
                generator = torch.Generator().manual_seed(config.seed * 7_919 + state.step + 1)
                views = augment_views(views, generator)
            target = pool.codes[pool.targets[indices]].to(device)
            predicted = state.encoder(views.float())
            loss = ((state.encoder.standardise(predicted) - state.encoder.standardise(target)) ** 2).mean()
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(state.encoder.parameters(), 10.0)
            state.optimizer.step()
            state.step += 1
            crash_point("after-step", step=state.step)
            step_time = time.perf_counter() - fetch_started
            value = float(loss.detach())
            run.log({"step": state.step, "loss": value, "lr": lr, "grad_norm": float(grad_norm), "step_time": step_time,
                     "samples_per_s": len(indices) / step_time})
            progress.update(task, completed=state.step, loss=value)
            if not console.is_terminal and (state.step % line_every == 0 or state.step == last):
                console.print(f"step {state.step}/{last} loss {value:.3f} ({step_time:.2f} s/step)", highlight=False)
            final = state.step >= last
            # Also at the last step, so a checkpoint holds the alignment a longer run would continue with.
            if state.step % config.train.align_every == 0:
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


def _progress_bar(console: Console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=console, transient=False, disable=not console.is_terminal)
