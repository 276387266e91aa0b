"""Plain PyTorch references for the ava kernels, written for clarity rather than speed.

These are the oracles every other implementation is tested against, so they follow docs/raymarching.md's
raymarching semantics in the most literal form: an explicit loop over steps and, inside a step,
over primitives in ascending index. They support float64 (for `torch.autograd.gradcheck`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_raydirs(
    campos: torch.Tensor,  # [N, 3] camera centre in the head frame (mm)
    camrot: torch.Tensor,  # [N, 3, 3] world->camera rotation in the head frame
    focal: torch.Tensor,  # [N, 2] (fx, fy) in pixels
    princpt: torch.Tensor,  # [N, 2] (cx, cy) in pixels
    pixelcoords: torch.Tensor,  # [N, H, W, 2] (x = column, y = row), no half-pixel offset
    volradius: float,  # mm per volume unit
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays through pixel positions, clipped to the volume cube [-1, 1]^3 (docs/raymarching.md).

    Returns raypos [N,H,W,3] (volume units), raydir [N,H,W,3] (unit length) and tminmax [N,H,W,2];
    rays that miss the cube get tmin > tmax and therefore no samples.
    """
    n, h, w, _ = pixelcoords.shape
    origin = (campos / volradius)[:, None, None, :].expand(n, h, w, 3)
    cam_x = (pixelcoords[..., 0] - princpt[:, None, None, 0]) / focal[:, None, None, 0]
    cam_y = (pixelcoords[..., 1] - princpt[:, None, None, 1]) / focal[:, None, None, 1]
    dir_cam = torch.stack([cam_x, cam_y, torch.ones_like(cam_x)], dim=-1)
    # camrot maps world to camera, so its transpose maps camera directions back to the head frame.
    direction = torch.einsum("nhwi,nij->nhwj", dir_cam, camrot)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    t_lower = (-1.0 - origin) / direction
    t_upper = (1.0 - origin) / direction
    tmin = torch.minimum(t_lower, t_upper).amax(dim=-1)
    tmax = torch.maximum(t_lower, t_upper).amin(dim=-1)
    tminmax = torch.stack([tmin.clamp(min=0.0), tmax], dim=-1)
    return origin.contiguous(), direction.contiguous(), tminmax.contiguous()


def _trilinear(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Samples volume [D,H,W,C] at coords [R,3] in [-1,1] (x->W, y->H, z->D), align_corners=True,
    zero outside. Returns [R, C]."""
    volume_cf = volume.permute(3, 0, 1, 2)[None]  # [1, C, D, H, W]
    grid = coords[None, :, None, None, :]  # [1, R, 1, 1, 3]
    sampled = F.grid_sample(volume_cf, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return sampled[0, :, :, 0, 0].transpose(0, 1)


def mvp_raymarch(
    raypos: torch.Tensor,  # [N, H, W, 3] ray origins (volume units)
    raydir: torch.Tensor,  # [N, H, W, 3] ray directions
    stepsize: float,  # dt, in the units of t
    tminmax: torch.Tensor,  # [N, H, W, 2] ray segment inside the volume
    primpos: torch.Tensor,  # [N, K, 3] primitive centres
    primrot: torch.Tensor,  # [N, K, 3, 3] primitive rotations (columns = local axes)
    primscale: torch.Tensor,  # [N, K, 3] inverse half-extents
    template: torch.Tensor,  # [N, K, TD, TH, TW, 4] RGBA, channels last
    warp: torch.Tensor | None = None,  # [N, K, WD, WH, WW, 3] or None
    *,
    fadescale: float = 8.0,
    fadeexp: float = 8.0,
) -> torch.Tensor:
    """Loop-form MVP raymarcher: returns rayrgba [N, H, W, 4] (premultiplied rgb, alpha)."""
    n, h, w, _ = raypos.shape
    num_prims = primpos.shape[1]
    origin = raypos.reshape(n, h * w, 3)
    direction = raydir.reshape(n, h * w, 3)
    tmin = tminmax[..., 0].reshape(n, h * w)
    tmax = tminmax[..., 1].reshape(n, h * w)
    dt = torch.tensor(stepsize, dtype=raypos.dtype, device=raypos.device)

    outputs = []
    for b in range(n):
        color = raypos.new_zeros(h * w, 3)
        alpha = raypos.new_zeros(h * w)
        step = 0
        while True:
            # t_i = tmin + i*dt, computed directly (never by incrementing) on every path.
            t = tmin[b] + torch.tensor(float(step), dtype=raypos.dtype, device=raypos.device) * dt
            inside = t < tmax[b]
            if not bool(inside.any()):
                break
            point = origin[b] + direction[b] * t[:, None]
            for k in range(num_prims):
                local = ((point - primpos[b, k]) @ primrot[b, k]) * primscale[b, k]
                valid = inside & (local.abs() < 1.0).all(dim=-1)
                if not bool(valid.any()):
                    continue
                fade = torch.exp(-fadescale * (local.abs() ** fadeexp).sum(dim=-1))
                coords = local if warp is None else _trilinear(warp[b, k], local)
                sample = _trilinear(template[b, k], coords)
                sample_alpha = sample[:, 3] * fade * dt
                new_alpha = alpha + sample_alpha
                weight = torch.where(valid, torch.clamp(new_alpha, max=1.0) - alpha, torch.zeros_like(alpha))
                color = color + weight[:, None] * sample[:, :3]
                alpha = alpha + weight
            step += 1
        outputs.append(torch.cat([color, alpha[:, None]], dim=-1))
    return torch.stack(outputs).reshape(n, h, w, 4)
