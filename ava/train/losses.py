"""The training loss of docs/training.md: image L1, mesh L1, KL and primitive volume, weighted."""

from __future__ import annotations

import torch

from ava.nn.bottleneck import kl_loss_stable
from ava.train.config import LossWeights

# Model outputs the loss needs beyond the ones always returned.
LOSS_OUTPUTS = frozenset({"primscale"})
# The terms `loss_terms` returns, in the order they are logged.
TERMS = ("irgbl1", "vertl1", "kldiv", "primvolsum")


def loss_terms(output: dict, batch: dict, vertmean: torch.Tensor, vertstd: float) -> dict[str, torch.Tensor]:
    """Unweighted terms (scalars).

    output: the model's dict (irgbrec [N,3,H,W] 0..255, verts [N,V,3] mm, expr_mu/expr_logstd
    [N,16,4,4], primscale [N,K,3]); batch: image [N,3,H,W] 0..255, verts [N,V,3] normalised;
    vertmean [V,3] (mm) and vertstd undo the normalisation of the target mesh.
    """
    target_verts = batch["verts"] * vertstd + vertmean
    return {
        "irgbl1": (output["irgbrec"] - batch["image"]).abs().mean(),
        "vertl1": (output["verts"] - target_verts).abs().mean(),
        "kldiv": kl_loss_stable(output["expr_mu"], output["expr_logstd"]).mean(),
        "primvolsum": torch.prod(1.0 / output["primscale"], dim=-1).sum(dim=-1).mean(),
    }


def total_loss(terms: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """sum of weight x term over the terms with a non-zero weight."""
    total = None
    for name, value in terms.items():
        weight = float(getattr(weights, name))
        if weight == 0.0:
            continue
        total = weight * value if total is None else total + weight * value
    if total is None:
        raise ValueError("every loss weight is zero; nothing to train")
    return total


def sanitise_gradients(parameters, clip: float, zero_nonfinite=None) -> torch.Tensor:
    """Zero NaN/inf gradient entries (as the original does), then clip the global norm to `clip`
    (torch's clip_grad_norm_ rule: scale by clip / (norm + 1e-6) when that is below 1).
    Returns the norm before clipping (after the NaN/inf entries were zeroed), on the device.

    zero_nonfinite: None, or a function that zeroes the NaN/inf entries of a list of tensors in
    place (ava.kernels.nonfinite.ZeroNonfinite: one launch for all of them). Without it, the
    usual case, all gradients finite, costs a few multi-tensor kernels and the per-tensor scrub
    (one kernel per parameter, hundreds of launches for the ava256 model) runs only when the norm
    shows a non-finite entry, which reads the norm on the host. With it, the scrub runs on every
    step and nothing is read back (what a captured CUDA graph needs). Both give the same gradients
    and norm: zeroing finite gradients' non-finite entries changes nothing."""
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    if not grads:
        return torch.zeros(())

    def total_norm():
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    if zero_nonfinite is not None:
        zero_nonfinite(grads)
        norm = total_norm()
    else:
        norm = total_norm()
        if not bool(torch.isfinite(norm)):
            for grad in grads:
                torch.nan_to_num_(grad, nan=0.0, posinf=0.0, neginf=0.0)
            norm = total_norm()
    torch._foreach_mul_(grads, torch.clamp(clip / (norm + 1e-6), max=1.0))
    return norm
