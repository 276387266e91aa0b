"""Per-camera and per-identity colour calibration (docs/model.md)."""

from __future__ import annotations

import torch
from torch import nn


UNSEEN_IDENTITY = -1
"""The idindex of a subject the model never trained on (any negative idindex means the same): it
has no row in the identity tables, so colour calibration uses no identity gain or bias (the neutral
calibration: the camera's row alone) and the background model the mean of the trained identities'
inputs (docs/evaluation.md, "Unseen subjects")."""


class Colorcal(nn.Module):
    """out = (wcam[cam] + wident[id]) * image + (bcam[cam] + bident[id]), per channel.

    As in the original no reference camera is pinned (a gauge freedom with the decoder), and it is
    applied to the ray colour before matting, so its bias also shifts the background. An unseen
    identity (idindex < 0, UNSEEN_IDENTITY) gets wident = bident = 0, their initial value.
    """

    def __init__(self, num_cameras: int, num_identities: int):
        super().__init__()
        self.wcam = nn.Parameter(torch.ones(num_cameras, 3))
        self.bcam = nn.Parameter(torch.zeros(num_cameras, 3))
        self.wident = nn.Parameter(torch.zeros(num_identities, 3))
        self.bident = nn.Parameter(torch.zeros(num_identities, 3))

    def gain_and_bias(self, camindex: torch.Tensor, idindex: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """camindex, idindex i64 [N] -> (gain [N,3], bias [N,3]); an unseen identity adds nothing."""
        seen = (idindex >= 0)[:, None].to(self.wident.dtype)
        rows = idindex.clamp(min=0)
        return self.wcam[camindex] + self.wident[rows] * seen, self.bcam[camindex] + self.bident[rows] * seen

    def forward(self, image: torch.Tensor, camindex: torch.Tensor, idindex: torch.Tensor) -> torch.Tensor:
        """image [N,3,H,W]; camindex, idindex i64 [N] -> [N,3,H,W]."""
        weight, bias = self.gain_and_bias(camindex, idindex)
        return weight[:, :, None, None] * image + bias[:, :, None, None]
