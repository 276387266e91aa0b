"""Background model: an MLP over pixel position, camera and identity (docs/model.md)."""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import nn

from ava.nn.layers import init_sequence, leaky_relu

FREQUENCIES = 10
EMBEDDING = 40
HIDDEN = 256
OUTPUT_SCALE, OUTPUT_OFFSET = 25.0, 100.0


def positional_encoding(samplecoords: torch.Tensor) -> torch.Tensor:
    """[N,H,W,2] in [-1,1] -> [N,40,H,W]: sin(2^i pi s) for i < 10, then cos, (x, y) interleaved."""
    terms = [torch.sin(2**i * math.pi * samplecoords) for i in range(FREQUENCIES)]
    terms += [torch.cos(2**i * math.pi * samplecoords) for i in range(FREQUENCIES)]
    return rearrange(torch.cat(terms, dim=-1), "n h w c -> n c h w")


class BackgroundModelSimple(nn.Module):
    """bg [N,3,H,W] = 25 * mlp(camera code, identity code, positional encoding) + 100.

    Plain (not weight-normalised) layers; the one-hot tables `cam_ident`, `id_ident` are
    persistent buffers as in the original. An unseen identity (idindex < 0) gets the mean of the
    identities' one-hot codes as its input. `width`: channels of the per-pixel layers (the
    original's 256); they run at every pixel of every image, which made them a third of the CPU
    demo's training step.
    """

    def __init__(self, num_cameras: int, num_identities: int, width: int = HIDDEN):
        super().__init__()
        self.cammod = nn.Sequential(nn.Linear(num_cameras, HIDDEN), leaky_relu(), nn.Linear(HIDDEN, EMBEDDING))
        self.idmod = nn.Sequential(nn.Linear(num_identities, HIDDEN), leaky_relu(), nn.Linear(HIDDEN, EMBEDDING))
        layers: list[nn.Module] = [nn.Conv2d(3 * EMBEDDING, width, 1, 1, 0), leaky_relu()]
        for _ in range(4):
            layers += [nn.Conv2d(width, width, 1, 1, 0), leaky_relu()]
        layers.append(nn.Conv2d(width, 3, 1, 1, 0))
        self.mlp = nn.Sequential(*layers)
        init_sequence(self.cammod)
        init_sequence(self.idmod)
        init_sequence(self.mlp)
        self.register_buffer("cam_ident", torch.eye(num_cameras))
        self.register_buffer("id_ident", torch.eye(num_identities))

    def forward(self, camindex: torch.Tensor, idindex: torch.Tensor, samplecoords: torch.Tensor) -> torch.Tensor:
        """camindex, idindex i64 [N]; samplecoords [N,H,W,2] -> [N,3,H,W]."""
        height, width = samplecoords.shape[1:3]
        camera = repeat(self.cammod(self.cam_ident[camindex]), "n c -> n c h w", h=height, w=width)
        # An identity the model never trained on (idindex < 0) gets the mean of the trained one-hot inputs.
        codes = torch.where((idindex >= 0)[:, None], self.id_ident[idindex.clamp(min=0)],
                            self.id_ident.mean(dim=0, keepdim=True))
        identity = repeat(self.idmod(codes), "n c -> n c h w", h=height, w=width)
        features = torch.cat([camera, identity, positional_encoding(samplecoords)], dim=1)
        return self.mlp(features) * OUTPUT_SCALE + OUTPUT_OFFSET
