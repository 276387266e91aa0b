"""The training loop (docs/training.md) with the original's defects fixed (docs/original-quirks.md):
the sampler changes order every epoch, maxiter ends the whole run, and a resume restores the
weights, optimiser, schedule, step, data position and RNG state.

The loop only orchestrates; each part is its own module: setup (data, model, optimiser and
schedule, resume, loader, run folder), step (one optimiser step), periodic (pictures, evaluation,
checkpoints), report (metrics and progress), interrupt (Ctrl-C / SIGTERM) and schedule (the
learning rate, and step numbering).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from ava.checkpoint import CheckpointWriteError
from ava.console import make_console
from ava.errors import UserError
from ava.faults import crash_point
from ava.files import is_storage_error
from ava.runtime.device import threads_note
from ava.runtime.interrupt import INTERRUPTED, StopRequest
from ava.train.config import TrainConfig
from ava.train.data import nonempty_batches
from ava.train.distributed import Distributed, setup_distributed
from ava.train.extras import terms_function
from ava.train.periodic import after_step, due, save
from ava.train.report import Reporter, format_duration
from ava.train.schedule import advance
from ava.train.setup import Trainer, check_config, setup
from ava.train.step import decoder_terms
from ava.train.watchdog import PEER_LOST, Watchdog, is_peer_failure, peer_failure_message


def train(config: TrainConfig) -> int:
    """Runs `ava train`; returns the exit status (0 done, 130 stopped by SIGINT/SIGTERM after
    writing a checkpoint). With several processes, one that dies or hangs makes the others stop
    with a message and status PEER_LOST (ava.train.watchdog)."""
    check_config(config)
    ctx = setup_distributed(config.device)
    watchdog = Watchdog(ctx.rank, ctx.world_size).start() if ctx.enabled else None
    try:
        status = _train(config, ctx)
    except BaseException as error:
        if ctx.enabled and is_peer_failure(error):
            # Said in one line; no tidying up, which could wait on the lost process again.
            make_console().print(peer_failure_message(ctx.rank, error), highlight=False, markup=False)
            sys.stderr.flush()
            os._exit(PEER_LOST)
        problem = _user_error(error, config)
        if watchdog is not None:
            watchdog.failed(problem or error)
        if problem is not None:
            raise problem from None
        raise
    finally:
        ctx.close()
    if watchdog is not None:
        watchdog.done()
    return status


def _user_error(error: BaseException, config: TrainConfig) -> UserError | None:
    """The one-line error for a failure that is the machine's, not ava's: CUDA out of memory, or
    a full disk (or quota, read-only file system) in the middle of the run; None for others."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return UserError(
            f"CUDA ran out of memory at --train.batchsize {config.train.batchsize} and --train.downsample "
            f"{config.train.downsample}; lower the batch size, raise the downsample or use a smaller --model")
    if isinstance(error, CheckpointWriteError) or (isinstance(error, OSError) and is_storage_error(error)):
        # What was written before is intact, and the run continues from it once there is room again.
        where = "" if isinstance(error, CheckpointWriteError) else f"cannot write {error.filename or 'a file'}: "
        reason = str(error) if isinstance(error, CheckpointWriteError) else (error.strerror or str(error))
        return UserError(f"{where}{reason}; the checkpoints already written are intact: make room and continue "
                         "with the same command and --resume auto")
    return None


def _train(config: TrainConfig, ctx: Distributed) -> int:
    started = time.perf_counter()
    trainer = setup(config, ctx, make_console())
    where = f"{ctx.device} ({threads_note(trainer.threads)})" if ctx.device.type == "cpu" else str(ctx.device)
    trainer.say(f"training {trainer.last_step - trainer.start_step} steps (to step {trainer.last_step}) on {where}"
                + (f" x {ctx.world_size} processes" if ctx.enabled else "") + f", batch {config.train.batchsize}"
                + (" per process" if ctx.enabled else ""), highlight=False)
    if trainer.start_step >= trainer.last_step:
        trainer.say(f"nothing to do: the run is already at step {trainer.start_step} of {trainer.last_step}")
        _shutdown(trainer)
        return 0
    reporter = Reporter(trainer, readback_every(config, ctx))
    first_step = trainer.state.step
    steps_started = time.perf_counter()
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
    took = timing(trainer.state.step - first_step, time.perf_counter() - steps_started, trainer.generation_seconds,
                  steps_started - started - trainer.generation_seconds)
    trainer.say(f"done: step {trainer.state.step}; {took}; checkpoints in {checkpoints}", highlight=False)
    return 0


def timing(steps: int, training: float, generation: float, setting_up: float) -> str:
    """'400 steps in 8m12s (1.23 s/step with evaluations, pictures and checkpoints), after 1m11s
    generating the demo data and 4s setting up': the steps' wall-clock seconds `training` apart
    from what came before them (`generation` 0: no data were generated)."""
    text = f"{steps} step{'s' if steps != 1 else ''} in {format_duration(training)}"
    if steps:
        text += f" ({training / steps:.2f} s/step with evaluations, pictures and checkpoints)"
    text += ", after "
    if generation:
        text += f"{format_duration(generation)} generating the demo data and "
    return text + f"{format_duration(setting_up)} setting up"


def readback_every(config: TrainConfig, ctx: Distributed) -> int:
    """Steps whose logged losses are read back together: --train.readback-every (default 10 on a
    GPU, 1 on a CPU, where reading costs no wait); 1 under torchrun, where the ranks agree on
    stopping every step."""
    if ctx.enabled:
        return 1
    if config.train.readback_every is not None:
        return config.train.readback_every
    return 10 if ctx.device.type == "cuda" else 1


def make_runner(trainer: Trainer):
    """The StepRunner of --train.step-mode for this run (ava.train.runner)."""
    from ava.train.runner import StepRunner, resolve_step_mode

    config, ctx, state = trainer.config, trainer.ctx, trainer.state
    mode = resolve_step_mode(config.train.step_mode, ctx.device, ctx.enabled)

    def terms_for(warm: bool):
        return terms_function(config, decoder_terms, warm=warm, vertmean=trainer.vertmean,
                              vertstd=trainer.data.stats.vertstd)

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
            crash_point("after-step", step=state.step)
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
