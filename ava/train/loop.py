"""The training loop (docs/training.md) with the original's defects fixed (docs/original-quirks.md):
the sampler changes order every epoch, maxiter ends the whole run, and a resume restores the
weights, optimiser, schedule, step, data position and RNG state.

The loop only orchestrates; each part is its own module: setup (data, model, optimiser and
schedule, resume, loader, run folder), step (one optimiser step), periodic (pictures, evaluation,
checkpoints), report (metrics and progress), interrupt (Ctrl-C / SIGTERM) and schedule (the
learning rate, and step numbering).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch
from rich.console import Console

from ava.errors import UserError
from ava.runtime.device import threads_note
from ava.train.config import TrainConfig
from ava.train.data import nonempty_batches
from ava.train.distributed import Distributed, setup_distributed
from ava.train.interrupt import INTERRUPTED, StopRequest
from ava.train.periodic import after_step, due, save
from ava.train.report import Reporter
from ava.train.schedule import advance
from ava.train.setup import Trainer, check_config, setup
from ava.train.step import decoder_terms


def train(config: TrainConfig) -> int:
    """Runs `ava train`; returns the exit status (0 done, 130 stopped by SIGINT/SIGTERM after
    writing a checkpoint)."""
    check_config(config)
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
    started = time.perf_counter()
    trainer = setup(config, ctx, Console(stderr=True))
    where = f"{ctx.device} ({threads_note(trainer.threads)})" if ctx.device.type == "cpu" else str(ctx.device)
    trainer.say(f"training {trainer.last_step - trainer.start_step} steps (to step {trainer.last_step}) on {where}"
                + (f" x {ctx.world_size} processes" if ctx.enabled else "") + f", batch {config.train.batchsize}"
                + (" per process" if ctx.enabled else ""), highlight=False)
    if trainer.start_step >= trainer.last_step:
        trainer.say(f"nothing to do: the run is already at step {trainer.start_step} of {trainer.last_step}")
        _shutdown(trainer)
        return 0
    reporter = Reporter(trainer, config.train.readback_every if not ctx.enabled else 1)
    try:
        with StopRequest() as stop:
            stopped = _run_steps(trainer, reporter, stop)
    finally:
        reporter.stop()
        _shutdown(trainer)
    if reporter.nonfinite:
        trainer.say(f"[yellow]warning:[/] {reporter.nonfinite} steps had a non-finite loss (their gradients "
                    "were zeroed)")
    checkpoints = Path(config.progress.output_path) / "checkpoints"
    if stopped:
        trainer.say(f"stopped by {stop.name() or 'another rank'} at step {trainer.state.step} after "
                    f"{time.perf_counter() - started:.0f} s; checkpoint in {checkpoints}; continue with the same "
                    "command and --resume auto", highlight=False)
        return INTERRUPTED
    trainer.say(f"done: step {trainer.state.step} in {time.perf_counter() - started:.0f} s; checkpoints in "
                f"{checkpoints}", highlight=False)
    return 0


def make_runner(trainer: Trainer):
    """The StepRunner of --train.step-mode for this run (ava.train.runner)."""
    from ava.train.runner import StepRunner, resolve_step_mode

    config, ctx, state = trainer.config, trainer.ctx, trainer.state
    mode = resolve_step_mode(config.train.step_mode, ctx.device, ctx.enabled)

    def terms_for(warm: bool):
        return functools.partial(decoder_terms, warm=warm, vertmean=trainer.vertmean,
                                 vertstd=trainer.data.stats.vertstd)

    if config.train.step_mode == "auto" and mode != "eager":
        trainer.say(f"steps: {mode} (--train.step-mode to change)", highlight=False)
    return StepRunner(mode, state.network, state.optimizer, config.train.losses, config.train.clip, ctx.device,
                      terms_for, say=trainer.say)


def _run_steps(trainer: Trainer, reporter: Reporter, stop: StopRequest) -> bool:
    """Steps from the current one to the last, epoch by epoch, with the periodic actions.
    Returns True when a stop was requested (on any rank); the checkpoint of the step is written."""
    from ava.data.bad_data import BadDataReport

    config, ctx, state = trainer.config, trainer.ctx, trainer.state
    progress = config.progress
    bad_data = BadDataReport(console=trainer.console if ctx.is_main else None)
    runner = make_runner(trainer)
    state.model.train()
    reporter.start()
    while state.step < trainer.last_step:
        epoch, offset = divmod(state.step, trainer.steps_per_epoch)
        trainer.sampler.set_epoch(epoch, offset * config.train.batchsize)
        fetch_started, started = time.perf_counter(), reporter.mark()
        for batch in nonempty_batches(trainer.loader):
            data_time = time.perf_counter() - fetch_started
            bad_data.update(batch)
            warm = state.step < config.train.warmup_iters
            result = runner.step(batch, warm)
            advance(state.scheduler, state.step + 1, config.train)
            state.step += 1
            values = result.values
            if ctx.enabled:
                # One all-reduce per step carries the logged losses and whether any rank was asked
                # to stop; every rank must see the same answer at the same step, so it is read now.
                flag = values.new_tensor([float(stop.requested)])
                values = ctx.mean(torch.cat([values, flag])).tolist()
                stopping, values = values[-1] > 0, values[:-1]
            else:
                stopping = stop.requested
            reporter.step(state.step, epoch, warm, values, started, data_time)
            final = state.step >= trainer.last_step
            if final or stopping or any(due(state.step, every, final) for every in
                                        (progress.image_freq, progress.psnr_freq, progress.checkpoint_freq)):
                reporter.flush()  # the step's record comes before what the periodic actions log
            after_step(trainer, state.step, result.batch, result.output, final)
            if final:
                break  # a stop asked for during the last step changes nothing: the run is complete
            if stopping:
                if not due(state.step, config.progress.checkpoint_freq, final):
                    save(trainer, state.step)
                return True
            fetch_started, started = time.perf_counter(), reporter.mark()
        bad_data.end_epoch(epoch)
    return False


def _shutdown(trainer: Trainer) -> None:
    """Closes the run folder's files (the metrics log, TensorBoard)."""
    if trainer.run is not None:
        trainer.run.close()
