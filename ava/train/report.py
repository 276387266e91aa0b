"""What a run tells as it goes: one metrics record per step (metrics.jsonl, TensorBoard), the
progress bar in a terminal, and a line every ~5% of the run otherwise.

The bar and the lines show the same numbers: the mean loss and the mean wall-clock time per step
(data loading, pictures and evaluations included) over the last `window` steps, and the ETA
those steps predict for the rest of the run.

A step's losses stay on the device until `readback_every` steps have gathered (or a periodic
action, a stop or the end comes): then all of them are read in one copy and their records
written, so the host does not wait for the GPU after every step. On a GPU a step's time is
measured with CUDA events, from the moment its batch was asked for (or the previous step ended
on the GPU, if later) to its end on the GPU.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import torch
from rich.console import Console

from ava.runtime.device import seconds_between, time_mark
from ava.train.losses import TERMS
from ava.train.setup import Trainer


def gpu_utilisation(device: torch.device) -> float | None:
    """NVML's utilisation of `device` in percent; None on a CPU or without NVML."""
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # needs pynvml / NVML; absent on some machines
        return None


def format_duration(seconds: float) -> str:
    """'42s', '3m05s', '2h07m' ('-' when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Window:
    """Loss and wall-clock seconds of the last `size` steps, and what they predict."""

    def __init__(self, size: int) -> None:
        self.losses: deque[float] = deque(maxlen=size)
        self.seconds: deque[float] = deque(maxlen=size)

    def add(self, loss: float, seconds: float) -> None:
        self.losses.append(loss)
        self.seconds.append(seconds)

    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else math.nan

    def seconds_per_step(self) -> float:
        return sum(self.seconds) / len(self.seconds) if self.seconds else math.nan

    def eta(self, steps_left: int) -> float:
        return self.seconds_per_step() * steps_left


def _progress_bar(console: Console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[summary]}"), TimeElapsedColumn(), console=console, transient=False)


@dataclass
class _Pending:
    """A step whose record waits for the read-back."""

    step: int
    epoch: int
    warm: bool
    values: object  # device tensor [loss, *TERMS, grad_norm], or those numbers already read
    lr: float
    data_time: float
    started: object  # CUDA event, or perf_counter seconds on a CPU
    ended: object
    utilisation: float | None


class Reporter:
    """Logs each step and shows progress (rank 0 shows; the loss is already averaged over ranks)."""

    def __init__(self, trainer: Trainer, readback_every: int = 1) -> None:
        self.trainer = trainer
        self.nonfinite = 0
        self.readback_every = max(1, readback_every)
        self._pending: list[_Pending] = []
        steps = trainer.last_step - trainer.start_step
        self._line_every = max(1, steps // 20)
        self._window = Window(self._line_every)
        # A bar in a terminal; elsewhere (a log file, a pipe) a line every ~5% instead.
        self._progress = _progress_bar(trainer.console) if trainer.ctx.is_main and trainer.console.is_terminal else None
        self._lines = trainer.ctx.is_main and not trainer.console.is_terminal
        self._task = None
        self._last = time.perf_counter()
        if self._progress:
            self._task = self._progress.add_task("training", total=trainer.last_step, completed=trainer.start_step,
                                                 summary="first step ...")

    def start(self) -> None:
        self._last = time.perf_counter()
        if self._progress:
            self._progress.start()

    def stop(self) -> None:
        # The loop flushes at its last step and before a stop; steps still pending here belong to
        # a run that failed, whose error must not be masked by reading the device again.
        if self._progress:
            self._progress.stop()

    def mark(self):
        """A point in time for step timing (ava.runtime.device.time_mark)."""
        return time_mark(self.trainer.ctx.device)

    def summary(self, step: int, short: bool = False) -> str:
        """'loss 7.148, 0.71 s/step, 5.6 samples/s, ETA 4m30s (means over the last 20 steps)';
        `short` (for the bar): 'loss 7.148, 0.71 s/step, ETA 4m30s'."""
        window, trainer = self._window, self.trainer
        per_step = window.seconds_per_step()
        eta = format_duration(window.eta(trainer.last_step - step))
        if short:
            return f"loss {window.mean_loss():.3f}, {per_step:.2f} s/step, ETA {eta}"
        samples = trainer.config.train.batchsize * trainer.ctx.world_size / per_step
        count = len(window.losses)
        return (f"loss {window.mean_loss():.3f}, {per_step:.2f} s/step, {samples:.1f} samples/s, ETA {eta} "
                f"(means over the last {count} step" + ("s)" if count > 1 else ")"))

    def step(self, step: int, epoch: int, warm: bool, values, started, data_time: float) -> None:
        """Notes step `step` (1-based). values: [loss, *TERMS, grad_norm] (averaged over ranks), a
        device tensor or numbers already read; started: mark() taken when its batch was asked for."""
        trainer = self.trainer
        # NVML sampling costs a little; once every 10 steps is enough for a utilisation trace.
        utilisation = gpu_utilisation(trainer.ctx.device) if step % 10 == 0 else None
        self._pending.append(_Pending(step, epoch, warm, values, float(trainer.state.optimizer.param_groups[0]["lr"]),
                                      data_time, started, self.mark(), utilisation))
        if len(self._pending) >= self.readback_every:
            self.flush()

    def flush(self) -> None:
        """Reads the pending steps' losses back (one copy) and writes their records."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        tensors = [entry.values for entry in pending if isinstance(entry.values, torch.Tensor)]
        read = iter(torch.stack(tensors).tolist()) if tensors else iter(())
        now = time.perf_counter()
        for entry in pending:
            values = next(read) if isinstance(entry.values, torch.Tensor) else list(entry.values)
            step_time = seconds_between(entry.started, entry.ended)  # the read-back has synchronised
            self._record(entry, values, step_time, (now - self._last) / len(pending))
        self._last = now

    def _record(self, entry: _Pending, values: list[float], step_time: float, wall_seconds: float) -> None:
        trainer, ctx, config = self.trainer, self.trainer.ctx, self.trainer.config
        step = entry.step
        if not math.isfinite(values[0]):
            self.nonfinite += 1
        record = {"step": step, "epoch": entry.epoch, "loss": values[0],
                  **{name: value for name, value in zip(TERMS, values[1:])},
                  "lr": entry.lr, "grad_norm": values[1 + len(TERMS)],
                  "warmup": entry.warm, "step_time": step_time, "data_time": entry.data_time,
                  "samples_per_s": config.train.batchsize * ctx.world_size / max(step_time, 1e-9)}
        if entry.utilisation is not None:
            record["gpu_utilisation"] = entry.utilisation
        run = trainer.run
        if run is not None:
            run.log(record)
            if step % config.progress.tensorboard.log_freq == 0:
                run.scalars(step, {"Total Loss": values[0], "lr": record["lr"], "step_time": step_time,
                                   **{f"loss/{name}": value for name, value in zip(TERMS, values[1:])}})
        # Wall-clock time per step since the previous read-back: the steps, their data, and the
        # pictures, evaluations and checkpoints in between.
        self._window.add(values[0], wall_seconds)
        if self._progress:
            self._progress.update(self._task, completed=step, summary=self.summary(step, short=True))
        if self._lines and (step % self._line_every == 0 or step == trainer.last_step):
            trainer.console.print(f"step {step}/{trainer.last_step} {self.summary(step)}", highlight=False,
                                  soft_wrap=True)
