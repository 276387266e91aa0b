"""Placing primitives on the guide surface (docs/model.md steps 4-6), for any grid size.

The original supports only 16x16 and 128x128 primitive grids on a 1024 UV map; the same rules
are written here for a P x P grid on an S x S position image: primitive (r, c) sits at texel
(stride*r + stride/2, stride*c + stride/2) with stride = S/P, and k = r*P + c (row-major).
"""

from __future__ import annotations

import torch
from einops import rearrange


def _stride(postex: torch.Tensor, prims_per_side: int) -> int:
    size = postex.shape[-1]
    # Each primitive's frame is a one-texel difference from its centre texel (stride/2) towards
    # +u and +v, which must stay inside the primitive's own texels: a stride of 2 would reach past
    # the last row and column of the image.
    if postex.shape[-2] != size or size % prims_per_side or (size // prims_per_side) % 2 or size // prims_per_side < 4:
        raise ValueError(
            f"a {prims_per_side}x{prims_per_side} primitive grid needs a square position image whose "
            f"side is an even multiple of {prims_per_side}, at least 4 texels per primitive; got {tuple(postex.shape[-2:])}"
        )
    return size // prims_per_side


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    # The original divides by the norm clamped at 1e-8 (not F.normalize's 1e-12).
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def place_primitives(postex: torch.Tensor, prims_per_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Primitive centres and TBN frames on a position image.

    postex [N,3,S,S] (volume units, flipped-UV layout) -> primpos [N,P*P,3], primrot [N,P*P,3,3]
    whose columns are (T, B, N): T follows +u (texture columns), N = T x dv is the surface
    normal and B = N x T.
    """
    stride = _stride(postex, prims_per_side)
    offset = stride // 2
    centres = postex[:, :, offset::stride, offset::stride]
    primpos = rearrange(centres, "n xyz r col -> n (r col) xyz")
    # One-texel differences at the centre texel, towards +column and +row.
    du = rearrange(postex[:, :, offset::stride, offset + 1 :: stride] - centres, "n xyz r col -> n r col xyz")
    dv = rearrange(postex[:, :, offset + 1 :: stride, offset::stride] - centres, "n xyz r col -> n r col xyz")
    tangent = _unit(du)
    normal = _unit(torch.cross(tangent, dv, dim=-1))
    bitangent = _unit(torch.cross(normal, tangent, dim=-1))
    primrot = rearrange(torch.stack((tangent, bitangent, normal), dim=-1), "n r col i j -> n (r col) i j")
    return primpos, primrot


def primitive_spacing(postex: torch.Tensor, prims_per_side: int) -> torch.Tensor:
    """Distance from each primitive centre to its next neighbour (docs/model.md).

    postex [N,3,S,S] -> [N,P*P]: the elementwise max of the distance to the next centre in the
    row and in the column; the last column (row) repeats the distance of the one before it.
    """
    stride = _stride(postex, prims_per_side)
    offset = stride // 2
    centres = postex[:, :, offset::stride, offset::stride]  # [N,3,P,P]
    if prims_per_side == 1:
        raise ValueError("primitive spacing needs at least a 2x2 primitive grid")
    along_row = centres[:, :, :, 1:] - centres[:, :, :, :-1]
    along_row = torch.cat((along_row, along_row[:, :, :, -1:]), dim=3).norm(dim=1)
    along_column = centres[:, :, 1:, :] - centres[:, :, :-1, :]
    along_column = torch.cat((along_column, along_column[:, :, -1:, :]), dim=2).norm(dim=1)
    return rearrange(torch.maximum(along_row, along_column), "n r col -> n (r col)")
