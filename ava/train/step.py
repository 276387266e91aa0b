"""One optimiser step: forward, weighted loss, backward, gradient clean-up, update.

`train_step` knows nothing of the decoder: the caller passes a function that runs the network on
a batch and returns its outputs and unweighted loss terms (`decoder_terms` for `ava train`), so
other trainings (e.g. of a headset driver) reuse the same step. `SyncFreeStep` is the same step
with nothing read back to the host, the form a CUDA graph can capture (ava.train.graph); the
loop picks between them (ava.train.runner) and only sees a `StepResult`.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from ava.runtime.model import run_model
from ava.train.losses import LOSS_OUTPUTS, loss_terms, sanitise_gradients, total_loss

TermsFn = Callable[[torch.nn.Module, dict], "tuple[dict, Mapping[str, torch.Tensor]]"]
"""(network, batch) -> (the network's outputs, unweighted scalar loss terms by name)."""

# A fused, capturable Adam (as the graph step uses) warns once when it steps outside a capture:
# the warm-up steps before the capture do so by design.
warnings.filterwarnings("ignore", message=".*capturable=True.*running without CUDA graph capture.*")


@dataclass
class StepResult:
    """What one step produced; tensors stay on the device (reading them synchronises)."""

    loss: torch.Tensor
    """Weighted total loss (0-dim, detached)."""
    terms: dict[str, torch.Tensor]
    """Unweighted loss terms (0-dim, detached), by name."""
    grad_norm: torch.Tensor
    """Global gradient norm before clipping (after NaN/inf entries were zeroed)."""
    output: dict
    """The network's outputs (for progress pictures)."""
    values: torch.Tensor = field(default=None)
    """[loss, *terms (in the terms' order), grad_norm] in one device tensor: what the loop logs,
    read back in one copy."""
    batch: dict | None = None
    """The batch as the step saw it, on the device."""


def _result(loss, terms, grad_norm, output, batch=None) -> StepResult:
    loss = loss.detach()
    terms = {name: value.detach() for name, value in terms.items()}
    grad_norm = grad_norm.to(loss.device)
    values = torch.stack([loss, *terms.values(), grad_norm.to(loss.dtype)])
    return StepResult(loss=loss, terms=terms, grad_norm=grad_norm, output=output, values=values, batch=batch)


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """The parameters the optimiser updates, in its order."""
    return [parameter for group in optimizer.param_groups for parameter in group["params"]]


def train_step(network: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, terms_fn: TermsFn,
               weights, clip: float) -> StepResult:
    """One update of `optimizer`'s parameters on `batch`.

    terms_fn(network, batch) -> (outputs, terms); `weights` has one attribute per term (a weight
    of 0 drops it; see ava.train.losses.total_loss); `clip` is the gradient-norm threshold
    (ava.train.losses.sanitise_gradients). The network must be in training mode. Reads the
    gradient norm on the host once (to decide whether to scrub non-finite gradients).
    """
    output, terms = terms_fn(network, batch)
    loss = total_loss(dict(terms), weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = sanitise_gradients(optimizer_parameters(optimizer), clip)
    optimizer.step()
    return _result(loss, terms, grad_norm, output, batch)


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


class DeviceLearningRate:
    """Each parameter group's learning rate as a device tensor that `optimizer.step()` reads
    (installed for the duration of the call), so a captured step follows the schedule.

    The groups keep their rate as a float, which the scheduler changes and checkpoints store;
    `update()` copies a changed float into the tensor on the device (no wait), and must run
    outside a capture: a fill recorded in a graph would put the capture-time rate back at every
    replay. The tensor is float32 on a GPU (what the fused Adam kernel reads) and float64 on a
    CPU, where Adam reads it back as the same Python float it was given.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        device = optimizer_parameters(optimizer)[0].device
        dtype = torch.float32 if device.type == "cuda" else torch.float64
        self.values = [float(group["lr"]) for group in optimizer.param_groups]
        self.tensors = [torch.tensor(value, dtype=dtype, device=device) for value in self.values]

    def update(self) -> None:
        for index, group in enumerate(self.optimizer.param_groups):
            value = float(group["lr"])
            if value != self.values[index]:
                self.tensors[index].fill_(value)
                self.values[index] = value

    @contextlib.contextmanager
    def installed(self):
        groups = self.optimizer.param_groups
        floats = [group["lr"] for group in groups]
        for group, tensor in zip(groups, self.tensors):
            group["lr"] = tensor
        try:
            yield
        finally:
            for group, value in zip(groups, floats):
                group["lr"] = value


class SyncFreeStep:
    """`train_step` with nothing read back to the host, the form a CUDA graph can capture:
    non-finite gradient entries are zeroed on every step by one kernel (ZeroNonfinite), the
    clipping factor stays on the device, and the learning rate is a device tensor
    (DeviceLearningRate). Same losses, gradients and update as `train_step`: bit-equal on a CPU;
    on a GPU the fused Adam reads the rate as float32 (the float path uses it as a double), a
    relative difference of at most 6e-8 in each update."""

    def __init__(self, network: torch.nn.Module, optimizer: torch.optim.Optimizer, weights, clip: float) -> None:
        from ava.kernels.nonfinite import ZeroNonfinite

        self.network = network
        self.optimizer = optimizer
        self.weights = weights
        self.clip = clip
        self.parameters = optimizer_parameters(optimizer)
        self.learning_rate = DeviceLearningRate(optimizer)
        self.zero_nonfinite = ZeroNonfinite()
        self.device = self.parameters[0].device

    def __call__(self, batch: dict, terms_fn: TermsFn) -> StepResult:
        if not _capturing(self.device):
            self.learning_rate.update()
        output, terms = terms_fn(self.network, batch)
        loss = total_loss(dict(terms), self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = sanitise_gradients(self.parameters, self.clip, self.zero_nonfinite)
        with self.learning_rate.installed():
            self.optimizer.step()
        return _result(loss, terms, grad_norm, output, batch)


def decoder_terms(network: torch.nn.Module, batch: dict, *, warm: bool, vertmean: torch.Tensor,
                  vertstd: float) -> tuple[dict, dict[str, torch.Tensor]]:
    """The universal decoder's `terms_fn`: renders the batch (the warm-up form when `warm`) and
    returns the docs/training.md terms (vertmean [V,3] mm and vertstd undo the mesh normalisation)."""
    output = run_model(network, batch, warm=warm, outputs=LOSS_OUTPUTS)
    return output, loss_terms(output, batch, vertmean, vertstd)
