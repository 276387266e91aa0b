"""One optimiser step: forward, weighted loss, backward, gradient clean-up, update.

`train_step` knows nothing of the decoder: the caller passes a function that runs the network on
a batch and returns its outputs and unweighted loss terms (`decoder_terms` for `ava train`), so
other trainings (e.g. of a headset driver) reuse the same step. This is the place for speed work
on the step itself (mixed precision, CUDA graphs): the loop only sees a `StepResult`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ava.runtime.model import run_model
from ava.train.losses import LOSS_OUTPUTS, loss_terms, sanitise_gradients, total_loss

TermsFn = Callable[[torch.nn.Module, dict], "tuple[dict, Mapping[str, torch.Tensor]]"]
"""(network, batch) -> (the network's outputs, unweighted scalar loss terms by name)."""


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


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """The parameters the optimiser updates, in its order."""
    return [parameter for group in optimizer.param_groups for parameter in group["params"]]


def train_step(network: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, terms_fn: TermsFn,
               weights, clip: float) -> StepResult:
    """One update of `optimizer`'s parameters on `batch`.

    terms_fn(network, batch) -> (outputs, terms); `weights` has one attribute per term (a weight
    of 0 drops it; see ava.train.losses.total_loss); `clip` is the gradient-norm threshold
    (ava.train.losses.sanitise_gradients). The network must be in training mode.
    """
    output, terms = terms_fn(network, batch)
    loss = total_loss(dict(terms), weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = sanitise_gradients(optimizer_parameters(optimizer), clip)
    optimizer.step()
    return StepResult(loss=loss.detach(), terms={name: value.detach() for name, value in terms.items()},
                      grad_norm=grad_norm, output=output)


def decoder_terms(network: torch.nn.Module, batch: dict, *, warm: bool, vertmean: torch.Tensor,
                  vertstd: float) -> tuple[dict, dict[str, torch.Tensor]]:
    """The universal decoder's `terms_fn`: renders the batch (the warm-up form when `warm`) and
    returns the docs/training.md terms (vertmean [V,3] mm and vertstd undo the mesh normalisation)."""
    output = run_model(network, batch, warm=warm, outputs=LOSS_OUTPUTS)
    return output, loss_terms(output, batch, vertmean, vertstd)
