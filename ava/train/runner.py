"""How `ava train` runs its steps (`--train.step-mode`, docs/training.md "How a step runs").

- `eager`: `train_step`, one kernel launch at a time; reads the gradient norm on the host once a
  step. What a CPU runs, and the mode for debugging.
- `sync-free`: `SyncFreeStep`, the same step with nothing read back to the host.
- `graph`: the warm-up steps (which re-estimate the primitive scale on the host) sync-free, then
  the step captured in one CUDA graph and replayed (ava.train.graph). One GPU, no torchrun.
- `auto` (the default): `eager`, also on a GPU, until tools/gpu_speed_suite.py has measured
  `graph` there (faster, and equal over 50 steps); then `graph` on a single CUDA device (under
  torchrun DistributedDataParallel's gradient all-reduce is not captured).

All modes compute the same losses and updates (docs/training.md states the bounds).
"""

from __future__ import annotations

from typing import Callable

import torch

from ava.errors import UserError
from ava.runtime.batch import to_device
from ava.train.step import StepResult, SyncFreeStep, TermsFn, train_step

STEP_MODES = ("auto", "eager", "sync-free", "graph")


def resolve_step_mode(mode: str, device: torch.device, distributed: bool) -> str:
    """The mode `auto` stands for here, or a UserError for a mode that cannot run here."""
    if mode not in STEP_MODES:
        raise UserError(f"--train.step-mode must be one of {', '.join(STEP_MODES)}, got {mode!r}")
    if mode == "auto":
        # Eager until tools/gpu_speed_suite.py has shown, on a GPU, the captured step faster than
        # the eager one and equal to it over 50 steps (BENCHMARKS.md): no GPU could be had for
        # that yet, and a default must not rest on an unmeasured claim. graph and sync-free are
        # there to opt into.
        return "eager"
    if mode == "graph" and device.type != "cuda":
        raise UserError("--train.step-mode graph needs a CUDA device; use eager or sync-free on a CPU")
    if mode == "graph" and distributed:
        raise UserError("--train.step-mode graph runs in one process; under torchrun use eager or sync-free")
    return mode


class StepRunner:
    """Runs each training step in the resolved mode. `terms_for(warm)` gives the terms function
    of a warm-up step (warm=True) or a regular one; step(host_batch, warm) takes the loader's
    batch (pinned host memory on a GPU) and returns the StepResult (with the device batch)."""

    def __init__(self, mode: str, network: torch.nn.Module, optimizer: torch.optim.Optimizer, weights, clip: float,
                 device: torch.device, terms_for: Callable[[bool], TermsFn], say=print) -> None:
        self.mode = mode
        self.network, self.optimizer, self.weights, self.clip = network, optimizer, weights, clip
        self.device = device
        self.terms_for = terms_for
        self.say = say
        self.sync_free = SyncFreeStep(network, optimizer, weights, clip) if mode != "eager" else None
        self.captured = None

    def step(self, host_batch: dict, warm: bool) -> StepResult:
        if self.mode == "graph" and not warm:
            return self._graph_step(host_batch)
        batch = to_device(host_batch, self.device)
        if self.mode == "eager":
            return train_step(self.network, self.optimizer, batch, self.terms_for(warm), self.weights, self.clip)
        return self.sync_free(batch, self.terms_for(warm))

    def _graph_step(self, host_batch: dict) -> StepResult:
        from ava.train.graph import CapturedStep

        if self.captured is None:
            self.captured = CapturedStep(self.sync_free, self.terms_for(False))
        capturing = self.captured.graph is None and self.captured.warmup_left == 0
        try:
            return self.captured(host_batch)
        except Exception as error:
            if not capturing:
                raise
            # The capture records without running: nothing has changed, and the step runs eagerly.
            self.say(f"[yellow]warning:[/] capturing the training step in a CUDA graph failed ({error!r:.300}); "
                     "training on with --train.step-mode sync-free")
            self.mode = "sync-free"
            self.captured = None
            return self.sync_free(to_device(host_batch, self.device), self.terms_for(False))
