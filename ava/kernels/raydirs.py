"""Public `compute_raydirs`: camera rays clipped to the volume cube (docs/raymarching.md)."""

from __future__ import annotations

import torch

from ava.kernels import reference
from ava.kernels.checks import check_same_device_dtype, check_tensor


def compute_raydirs(
    campos: torch.Tensor,  # [N, 3] camera centre in the head frame (mm)
    camrot: torch.Tensor,  # [N, 3, 3] world->camera rotation in the head frame
    focal: torch.Tensor,  # [N, 2] focal lengths in pixels
    princpt: torch.Tensor,  # [N, 2] principal point in pixels
    pixelcoords: torch.Tensor,  # [N, H, W, 2] pixel positions (x = column, y = row)
    volradius: float,  # mm per volume unit (256 in Ava-256)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns raypos [N,H,W,3], raydir [N,H,W,3] (unit) and tminmax [N,H,W,2]; rays that miss the
    cube [-1,1]^3 get tmin > tmax. No gradient flows through (as in the original). It is a handful
    of elementwise operations, so plain PyTorch is already memory-bound and needs no kernel."""
    sizes: dict[str, int] = {}
    check_tensor("campos", campos, ("N", 3), sizes)
    check_tensor("camrot", camrot, ("N", 3, 3), sizes)
    check_tensor("focal", focal, ("N", 2), sizes)
    check_tensor("princpt", princpt, ("N", 2), sizes)
    check_tensor("pixelcoords", pixelcoords, ("N", "H", "W", 2), sizes)
    check_same_device_dtype(dict(campos=campos, camrot=camrot, focal=focal, princpt=princpt, pixelcoords=pixelcoords))
    if not float(volradius) > 0.0:
        raise ValueError(f"volradius must be positive, got {volradius}")
    with torch.no_grad():
        return reference.compute_raydirs(campos, camrot, focal, princpt, pixelcoords, float(volradius))
