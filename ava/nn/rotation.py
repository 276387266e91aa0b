"""Axis-angle to rotation matrix exactly as the original computes it (docs/model.md)."""

from __future__ import annotations

import torch

RODRIGUES_EPSILON = 1e-5


def rodrigues(rvec: torch.Tensor) -> torch.Tensor:
    """rvec [M,3] -> R [M,3,3].

    Quirk kept for parity: theta = sqrt(1e-5 + |r|^2), so the axis r/theta is not unit length and
    R is only approximately orthonormal for small r (r = 0 gives cos(sqrt(1e-5)) * I). Trained
    checkpoints absorbed this, so it is reproduced term by term.
    """
    theta = torch.sqrt(RODRIGUES_EPSILON + torch.sum(rvec**2, dim=1))
    axis = rvec / theta[:, None]
    cos = torch.cos(theta)
    sin = torch.sin(theta)
    x, y, z = axis[:, 0], axis[:, 1], axis[:, 2]
    one_minus_cos = 1.0 - cos
    return torch.stack(
        (
            x**2 + (1.0 - x**2) * cos,
            x * y * one_minus_cos - z * sin,
            x * z * one_minus_cos + y * sin,
            x * y * one_minus_cos + z * sin,
            y**2 + (1.0 - y**2) * cos,
            y * z * one_minus_cos - x * sin,
            x * z * one_minus_cos - y * sin,
            y * z * one_minus_cos + x * sin,
            z**2 + (1.0 - z**2) * cos,
        ),
        dim=1,
    ).view(-1, 3, 3)
