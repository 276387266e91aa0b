"""Geometry and RGB decoders (docs/model.md), generalised to any UV size and primitive grid.

Both decoders double a 4x4 code up to an S x S slab with transposed convolutions t_0..t_{L-1},
adding the identity skip of the same level when its width matches, and cut the slab into
P x P primitives of D^3 voxels: slab channel = depth d (times colour), texel (r*D+h, c*D+w)
= primitive (r, c), voxel (h, w).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ava.nn.config import LATENT_CHANNELS, VIEW_CHANNELS, ModelConfig
from ava.nn.layers import Conv2dWN, ConvTranspose2dWN, LinearWN, init_sequence, leaky_relu
from ava.nn.uvmap import Topology

SKIP_SCALE = 1 / math.sqrt(2)
OPACITY_SCALE = 0.1
MOTION_SCALE = 0.01
HEAD_CHANNELS = 64


def first_uv_per_vertex(topology: Topology) -> torch.Tensor:
    """i64 [V]: the texture coordinate id first met for each vertex, scanning faces then corners.

    Vertices used by no face get id 0 (the original's behaviour: they all read the same UV).
    """
    faces = topology.faces.reshape(-1).numpy()
    face_uvs = topology.face_uvs.reshape(-1).numpy()
    first = np.zeros(topology.num_verts, dtype=np.int64)
    used, first_position = np.unique(faces, return_index=True)  # return_index gives first occurrences
    first[used] = face_uvs[first_position]
    return torch.from_numpy(first)


def _decoder_layers(in_channels: int, widths: list[int]) -> nn.ModuleDict:
    layers = nn.ModuleDict()
    channels = [in_channels] + widths
    for index in range(len(widths)):
        modules: list[nn.Module] = [ConvTranspose2dWN(channels[index], channels[index + 1], 4, 2, 1)]
        if index < len(widths) - 1:
            modules.append(leaky_relu())
        layers[f"t{index}"] = nn.Sequential(*modules)
    return layers


def _add_skip(x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    # A skip is added only where its width matches; the last layer (D or 3D channels vs 3) never.
    if skip is not None and skip.shape[1] == x.shape[1]:
        return (x + skip) * SKIP_SCALE
    return x


def _slab_to_primitives(slab: torch.Tensor, per_side: int, voxels: int, channels: int) -> torch.Tensor:
    """[N, D*C, S, S] with channel index d*C + c -> [N, P*P, D, D, D, C] (k = r*P + col)."""
    return rearrange(slab, "n (d c) (r h) (col w) -> n (r col) d h w c", d=voxels, c=channels, r=per_side,
                     col=per_side)


class GeometryDecoder(nn.Module):
    """Opacity slabs, per-primitive motion residuals and the mesh (docs/model.md).

    Quirk kept for parity: vertices are read from the decoded geometry image with grid y = 2v - 1,
    i.e. v = 0 at the top, the opposite of the (flipped) UV maps used everywhere else. The
    `coords` buffer therefore holds each vertex's first UV mapped to [-1, 1] without a flip.
    """

    def __init__(self, config: ModelConfig, topology: Topology):
        super().__init__()
        self.prims_per_side = config.prims_per_side
        self.voxels = config.voxels_per_prim
        self.motion_size = config.prims_per_side
        self.geo_size = config.geometry_head_size
        self.encmod = nn.Sequential(Conv2dWN(LATENT_CHANNELS, LATENT_CHANNELS, 1, 1, 0), leaky_relu())
        init_sequence(self.encmod)
        widths = config.decoder_channels(self.voxels)
        self.layers = _decoder_layers(2 * LATENT_CHANNELS, widths)
        resolution = 8
        for index, width in enumerate(widths):
            init_sequence(self.layers[f"t{index}"])
            if resolution == self.motion_size:
                self.motion = nn.Sequential(
                    Conv2dWN(width, HEAD_CHANNELS, 1, 1, 0), leaky_relu(), Conv2dWN(HEAD_CHANNELS, 9, 1, 1, 0)
                )
                init_sequence(self.motion)
            if resolution == self.geo_size:
                self.geo = nn.Sequential(
                    Conv2dWN(width, HEAD_CHANNELS, 1, 1, 0), leaky_relu(), Conv2dWN(HEAD_CHANNELS, 3, 1, 1, 0)
                )
                init_sequence(self.geo)
            resolution *= 2
        self.bias = nn.Parameter(torch.zeros(self.voxels, config.uv_size, config.uv_size))
        coords = topology.uvs[first_uv_per_vertex(topology)] * 2 - 1.0
        self.register_buffer("coords", coords.view(1, -1, 1, 2).float())

    def forward(
        self, expression: torch.Tensor, identity: torch.Tensor, skips: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """expression, identity [N,16,4,4]; skips coarse to fine -> (opacity [N,K,D,D,D,1],
        verts [N,V,3] (normalised), position [N,K,3], rotation [N,K,3], scale [N,K,3] residuals)."""
        x = torch.cat([self.encmod(expression).view(-1, LATENT_CHANNELS, 4, 4), identity], dim=1)
        motion = geometry = None
        for index in range(len(self.layers)):
            x = _add_skip(self.layers[f"t{index}"](x), skips[index] if index < len(skips) else None)
            if x.shape[-1] == self.motion_size:
                motion = self.motion(x)
            if x.shape[-1] == self.geo_size:
                geometry = self.geo(x)
        opacity = torch.exp((x + self.bias[None]) * OPACITY_SCALE)
        opacity = _slab_to_primitives(opacity, self.prims_per_side, self.voxels, 1)
        motion = motion.view(motion.shape[0], 9, -1).permute(0, 2, 1)
        position = motion[:, :, 0:3] * MOTION_SCALE
        rotation = motion[:, :, 3:6] * MOTION_SCALE
        scale = torch.exp(MOTION_SCALE * motion[:, :, 6:9])
        coords = self.coords.expand(geometry.shape[0], -1, -1, -1)
        verts = F.grid_sample(geometry, coords, mode="bilinear", padding_mode="zeros", align_corners=False)
        verts = rearrange(verts, "n c v 1 -> n v c")  # the original averages over this axis of size 1
        return opacity, verts, position, rotation, scale


class RGBDecoder(nn.Module):
    """View-conditioned colour slabs (docs/model.md): [N,K,D,D,D,3] in about -4..6 (x25+100 later)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.prims_per_side = config.prims_per_side
        self.voxels = config.voxels_per_prim
        self.encmod = nn.Sequential(Conv2dWN(LATENT_CHANNELS, LATENT_CHANNELS, 1, 1, 0), leaky_relu())
        self.viewmod = nn.Sequential(
            LinearWN(3, 16), leaky_relu(), LinearWN(16, VIEW_CHANNELS * 4 * 4), leaky_relu()
        )
        widths = config.decoder_channels(3 * self.voxels)
        self.layers = _decoder_layers(VIEW_CHANNELS + 2 * LATENT_CHANNELS, widths)
        init_sequence(self.viewmod)
        init_sequence(self.encmod)
        for index in range(len(widths)):
            init_sequence(self.layers[f"t{index}"])
        self.bias = nn.Parameter(torch.zeros(3 * self.voxels, config.uv_size, config.uv_size))

    def forward(
        self, expression: torch.Tensor, identity: torch.Tensor, skips: list[torch.Tensor], viewdir: torch.Tensor
    ) -> torch.Tensor:
        """expression, identity [N,16,4,4]; skips coarse to fine; viewdir [N,3] -> [N,K,D,D,D,3]."""
        code = self.encmod(expression).view(-1, LATENT_CHANNELS, 4, 4)
        view = rearrange(self.viewmod(viewdir), "n (c h w) -> n c h w", c=VIEW_CHANNELS, h=4, w=4)
        x = torch.cat([view, code, identity], dim=1)
        for index in range(len(self.layers)):
            x = _add_skip(self.layers[f"t{index}"](x), skips[index] if index < len(skips) else None)
        return _slab_to_primitives(x + self.bias[None], self.prims_per_side, self.voxels, 3)
