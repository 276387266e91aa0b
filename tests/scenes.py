"""Random MVP scenes for kernel tests (small enough for the Triton interpreter)."""

from __future__ import annotations

import math

import torch


def random_rotation(count: int, generator: torch.Generator) -> torch.Tensor:
    """Uniformly random rotations [count, 3, 3] (QR of Gaussian matrices, det +1)."""
    q, r = torch.linalg.qr(torch.randn(count, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    det = torch.linalg.det(q)
    q[:, :, 0] *= det[:, None]
    return q.float()


def camera_rays(n: int, h: int, w: int, generator: torch.Generator, distance: float = 3.0, fov: float = 0.9):
    """Pinhole rays from a camera on the -z axis looking at the origin, clipped to [-1,1]^3."""
    from ava.kernels.reference import compute_raydirs

    focal = 0.5 * w / math.tan(fov / 2)
    jitter = 0.05 * torch.randn(n, 3, generator=generator)
    campos = (torch.tensor([0.0, 0.0, -distance]) + jitter) * 100.0
    camrot = torch.eye(3).expand(n, 3, 3).contiguous()
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    pixelcoords = torch.stack([xs, ys], dim=-1).expand(n, h, w, 2).contiguous()
    focal_t = torch.full((n, 2), focal)
    princpt = torch.tensor([(w - 1) / 2, (h - 1) / 2]).expand(n, 2).contiguous()
    return compute_raydirs(campos, camrot, focal_t, princpt, pixelcoords, 100.0)


def random_scene(
    seed: int,
    n: int = 1,
    h: int = 6,
    w: int = 5,
    num_prims: int = 6,
    template_size: tuple[int, int, int] = (3, 4, 5),
    warp_size: tuple[int, int, int] | None = None,
    scale_range: tuple[float, float] = (1.5, 4.0),
    spread: float = 0.5,
    alpha_shift: float = 0.0,
    alpha_gain: float = 4.0,
    stepsize: float = 0.07,
) -> dict:
    """A dict of mvp_raymarch arguments. Opaque templates (alpha_gain large) saturate rays."""
    generator = torch.Generator().manual_seed(seed)
    raypos, raydir, tminmax = camera_rays(n, h, w, generator)
    primpos = (torch.rand(n, num_prims, 3, generator=generator) * 2 - 1) * spread
    primrot = random_rotation(n * num_prims, generator).reshape(n, num_prims, 3, 3)
    low, high = scale_range
    primscale = low + (high - low) * torch.rand(n, num_prims, 3, generator=generator)
    td, th, tw = template_size
    template = torch.nn.functional.softplus(1.5 * torch.randn(n, num_prims, td, th, tw, 4, generator=generator))
    template[..., 3] = torch.nn.functional.softplus(alpha_gain * torch.randn(n, num_prims, td, th, tw, generator=generator) + alpha_shift)
    template[..., :3] *= 50.0
    warp = None
    if warp_size is not None:
        wd, wh, ww = warp_size
        zs, ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, wd), torch.linspace(-1, 1, wh), torch.linspace(-1, 1, ww), indexing="ij"
        )
        identity = torch.stack([xs, ys, zs], dim=-1)
        warp = identity + 0.15 * torch.randn(n, num_prims, wd, wh, ww, 3, generator=generator)
    return dict(
        raypos=raypos, raydir=raydir, stepsize=stepsize, tminmax=tminmax, primpos=primpos,
        primrot=primrot, primscale=primscale, template=template, warp=warp,
    )
