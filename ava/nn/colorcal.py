"""Per-camera and per-identity colour calibration (docs/model.md)."""

from __future__ import annotations

import torch
from torch import nn


class Colorcal(nn.Module):
    """out = (wcam[cam] + wident[id]) * image + (bcam[cam] + bident[id]), per channel.

    As in the original no reference camera is pinned (a gauge freedom with the decoder), and it is
    applied to the ray colour before matting, so its bias also shifts the background.
    """

    def __init__(self, num_cameras: int, num_identities: int):
        super().__init__()
        self.wcam = nn.Parameter(torch.ones(num_cameras, 3))
        self.bcam = nn.Parameter(torch.zeros(num_cameras, 3))
        self.wident = nn.Parameter(torch.zeros(num_identities, 3))
        self.bident = nn.Parameter(torch.zeros(num_identities, 3))

    def forward(self, image: torch.Tensor, camindex: torch.Tensor, idindex: torch.Tensor) -> torch.Tensor:
        """image [N,3,H,W]; camindex, idindex i64 [N] -> [N,3,H,W]."""
        weight = self.wcam[camindex] + self.wident[idindex]
        bias = self.bcam[camindex] + self.bident[idindex]
        return weight[:, :, None, None] * image + bias[:, :, None, None]
