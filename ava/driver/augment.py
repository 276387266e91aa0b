"""Training-time changes to the headset views that a driver must not care about: how the headset
sits (each view shifted, rotated and scaled a little), and exposure (gamma, gain, sensor noise)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment_views(views: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """views [N,5,S,S] (0..255, any device) -> float views of the same shape.

    Per view: a similarity transform (shift up to 5% of the image, rotation up to 4 degrees, scale
    0.94..1.06; borders repeat), gamma 0.8..1.25, gain 0.8..1.2 and Gaussian noise of standard
    deviation up to 3 (0..255 units). Random numbers come from `generator` (CPU), so a run that
    seeds it per step is reproducible and resumable.
    """
    batch, count, size, _ = views.shape
    total = batch * count

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return (low + (high - low) * torch.rand(total, *shape, generator=generator)).to(views.device)

    angle = uniform(-math.radians(4.0), math.radians(4.0))
    scale = uniform(0.94, 1.06)
    shift = uniform(-0.1, 0.1, 2)  # in [-1,1] image coordinates: 5% of the side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1)
    flat = views.float().reshape(total, 1, size, size)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    moved = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gamma = uniform(math.log(0.8), math.log(1.25)).exp()
    gain = uniform(0.8, 1.2)
    shaded = 255.0 * (moved / 255.0).clamp(0, 1) ** gamma[:, None, None, None] * gain[:, None, None, None]
    sigma = uniform(0.0, 3.0)
    noise = torch.randn(flat.shape, generator=generator).to(views.device) * sigma[:, None, None, None]
    return (shaded + noise).clamp(0, 255).reshape(batch, count, size, size)
