"""What a run tells as it goes: one metrics record per step (metrics.jsonl, TensorBoard), the
progress bar in a terminal, and a line every ~5% of the run otherwise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from rich.console import Console

from ava.train.losses import TERMS
from ava.train.setup import Trainer
from ava.train.step import StepResult


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


def gpu_utilisation(device: torch.device) -> float | None:
    """NVML's utilisation of `device` in percent; None on a CPU or without NVML."""
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # needs pynvml / NVML; absent on some machines
        return None


def _progress_bar(console: Console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=console, transient=False)


class Reporter:
    """Logs each step and shows progress (rank 0 shows; every rank joins the loss all-reduce)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.nonfinite = 0
        self._meters = _Meters()
        self._line_every = max(1, (trainer.last_step - trainer.start_step) // 20)
        self._progress = _progress_bar(trainer.console) if trainer.ctx.is_main else None
        self._task = None
        if self._progress:
            self._task = self._progress.add_task("training", total=trainer.last_step, completed=trainer.start_step,
                                                 loss=float("nan"))

    def start(self) -> None:
        if self._progress:
            self._progress.start()

    def stop(self) -> None:
        if self._progress:
            self._progress.stop()

    def step(self, step: int, epoch: int, warm: bool, result: StepResult, fetch_started: float,
             step_started: float) -> None:
        """Records step `step` (1-based): averages the loss over ranks (collective), then logs it."""
        import time

        trainer, ctx, config = self.trainer, self.trainer.ctx, self.trainer.config
        logged = ctx.mean(torch.stack([result.loss] + [result.terms[name] for name in TERMS]))
        values = logged.tolist()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        now = time.perf_counter()
        step_time = now - fetch_started
        if not math.isfinite(values[0]):
            self.nonfinite += 1
        record = {"step": step, "epoch": epoch, "loss": values[0],
                  **{name: value for name, value in zip(TERMS, values[1:])},
                  "lr": trainer.state.optimizer.param_groups[0]["lr"], "grad_norm": float(result.grad_norm),
                  "warmup": warm, "step_time": step_time, "data_time": step_started - fetch_started,
                  "samples_per_s": config.train.batchsize * ctx.world_size / step_time}
        # NVML sampling costs a little; once every 10 steps is enough for a utilisation trace.
        utilisation = gpu_utilisation(ctx.device) if step % 10 == 0 else None
        if utilisation is not None:
            record["gpu_utilisation"] = utilisation
        run = trainer.run
        if run is not None:
            run.log(record)
            if step % config.progress.tensorboard.log_freq == 0:
                run.scalars(step, {"Total Loss": values[0], "lr": record["lr"], "step_time": step_time,
                                   **{f"loss/{name}": value for name, value in zip(TERMS, values[1:])}})
        self._meters.add(values[0])
        if self._progress:
            self._progress.update(self._task, completed=step, loss=values[0])
            if not trainer.console.is_terminal and (step % self._line_every == 0 or step == trainer.last_step):
                trainer.console.print(f"step {step}/{trainer.last_step} loss {self._meters.mean():.3f} "
                                      f"({step_time:.2f} s/step, {record['samples_per_s']:.1f} samples/s)",
                                      highlight=False)
                self._meters = _Meters()
