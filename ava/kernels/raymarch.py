"""Public MVP raymarcher: input checks, backend choice and the autograd glue of the Triton path."""

from __future__ import annotations

import os

import torch

from ava.kernels import ops, vectorized
from ava.kernels.checks import check_same_device_dtype, check_tensor


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def default_backend(device: torch.device) -> str:
    """'triton' for CUDA tensors or under TRITON_INTERPRET=1, else the vectorised 'torch' path."""
    return "triton" if device.type == "cuda" or _interpreting() else "torch"


def mvp_raymarch(
    raypos: torch.Tensor,  # [N, H, W, 3] ray origins, volume units
    raydir: torch.Tensor,  # [N, H, W, 3] ray directions (unit length from compute_raydirs)
    stepsize: float,  # dt between samples, in units of t
    tminmax: torch.Tensor,  # [N, H, W, 2] segment of each ray to march
    primpos: torch.Tensor,  # [N, K, 3] primitive centres
    primrot: torch.Tensor,  # [N, K, 3, 3] rotations; columns are the primitive's local axes
    primscale: torch.Tensor,  # [N, K, 3] inverse half-extents along the local axes
    template: torch.Tensor,  # [N, K, TD, TH, TW, 4] RGBA voxels, channels last
    warp: torch.Tensor | None = None,  # [N, K, WD, WH, WW, 3] optional coordinate warp
    *,
    fadescale: float = 8.0,
    fadeexp: float = 8.0,
    backend: str | None = None,  # "triton", "torch" or None (automatic)
) -> torch.Tensor:
    """Renders a Mixture of Volumetric Primitives; returns rayrgba [N, H, W, 4] (premultiplied rgb,
    alpha). Semantics: docs/raymarching.md. Differentiable with respect to primpos,
    primrot, primscale, template and warp; rays, tminmax and stepsize get no gradient."""
    sizes: dict[str, int] = {}
    check_tensor("raypos", raypos, ("N", "H", "W", 3), sizes)
    check_tensor("raydir", raydir, ("N", "H", "W", 3), sizes)
    check_tensor("tminmax", tminmax, ("N", "H", "W", 2), sizes)
    check_tensor("primpos", primpos, ("N", "K", 3), sizes)
    check_tensor("primrot", primrot, ("N", "K", 3, 3), sizes)
    check_tensor("primscale", primscale, ("N", "K", 3), sizes)
    check_tensor("template", template, ("N", "K", "TD", "TH", "TW", 4), sizes)
    if warp is not None:
        check_tensor("warp", warp, ("N", "K", "WD", "WH", "WW", 3), sizes)
    for axis in ("TD", "TH", "TW", "WD", "WH", "WW"):
        if axis in sizes and sizes[axis] < 2:
            raise ValueError(f"template and warp grids need at least 2 voxels per axis, got {axis}={sizes[axis]}")
    check_same_device_dtype(
        dict(raypos=raypos, raydir=raydir, tminmax=tminmax, primpos=primpos, primrot=primrot,
             primscale=primscale, template=template, warp=warp)
    )
    if not float(stepsize) > 0.0:
        raise ValueError(f"stepsize must be a positive number, got {stepsize}")
    if backend is None:
        backend = default_backend(raypos.device)
    if backend not in ("triton", "torch"):
        raise ValueError(f"backend must be 'triton', 'torch' or None, got {backend!r}")

    n, h, w = sizes["N"], sizes["H"], sizes["W"]
    if n == 0 or h == 0 or w == 0:
        return raypos.new_zeros(n, h, w, 4)
    # No gradient flows to rays, so they may be detached; the rest only made contiguous.
    raypos, raydir, tminmax = (x.detach().contiguous() for x in (raypos, raydir, tminmax))
    primpos, primrot, primscale, template = (x.contiguous() for x in (primpos, primrot, primscale, template))
    warp = warp.contiguous() if warp is not None else None

    scalars = dict(stepsize=float(stepsize), fadescale=float(fadescale), fadeexp=float(fadeexp))
    if backend == "torch":
        if torch.compiler.is_compiling():
            return ops.mvp_raymarch_torch(raypos, raydir, scalars["stepsize"], tminmax, primpos, primrot, primscale,
                                          template, warp, scalars["fadescale"], scalars["fadeexp"])
        return vectorized.mvp_raymarch(raypos, raydir, scalars["stepsize"], tminmax, primpos, primrot, primscale,
                                       template, warp, fadescale=scalars["fadescale"], fadeexp=scalars["fadeexp"])
    if raypos.device.type != "cuda" and not _interpreting():
        raise ValueError("the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU)")
    # The saturation record is only needed (and only written) when a gradient will be taken.
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (primpos, primrot, primscale, template, warp)
    )
    # The list buffers' sizes come from the shapes (nothing is read back from the device), so the
    # call can be captured in a CUDA graph; see raymarch_triton.ListCapacity.
    from ava.kernels.raymarch_triton import list_capacities

    rayrgba, *_ = ops.mvp_raymarch_triton(
        raypos, raydir, scalars["stepsize"], tminmax, primpos, primrot, primscale, template, warp,
        scalars["fadescale"], scalars["fadeexp"], needs_grad, *list_capacities(n, h, w, primpos.shape[1]),
    )
    return rayrgba
