"""Vectorised PyTorch MVP raymarcher: the CPU path, differentiable through plain autograd.

Instead of marching, it enumerates the samples directly:
1. Every (ray, primitive) pair is tested against the primitive's bounding sphere (two small
   matrix products per chunk of rays), and the survivors get an exact slab test in the
   primitive's frame, which gives the segment of the ray inside the box.
2. Each hit pair expands into the step indices i whose sample t_i = tmin + i*dt may fall inside
   the box (one step of slack on each side; the exact strict test on y decides).
3. All samples are evaluated at once (fade, optional warp, trilinear template fetch).
4. Samples are sorted by (ray, step, primitive), the order docs/raymarching.md prescribes, and composited
   with the closed form w_j = min(S_j, 1) - min(S_{j-1}, 1), S being the per-ray running sum
   of alpha*dt. The running sum is taken in float64: a float32 cumulative sum over millions of
   samples would lose the per-ray precision that the saturation point depends on.
"""

from __future__ import annotations

import torch

# Upper bound on (ray, primitive) pairs slab-tested at once; bounds memory at ~20 bytes a pair.
_PAIR_CHUNK = 1 << 22


def _trilinear_gather(volume: torch.Tensor, index: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear fetch with align_corners=True and zeros outside.

    volume [P, D, H, W, C] (P primitives), index [S] primitive per sample, coords [S, 3] in
    [-1, 1] with x -> W, y -> H, z -> D. Returns [S, C]. All 8 corners are gathered in one
    indexing operation, which is several times faster on the CPU than 8 separate ones.
    """
    _, depth, height, width, channels = volume.shape
    flat = volume.reshape(-1, channels)
    sizes = coords.new_tensor([width - 1, height - 1, depth - 1])
    # Clamping far-outside points keeps integer conversion safe; their corners stay outside.
    position = ((coords + 1.0) * 0.5 * sizes).clamp(-2.0, max(width, height, depth) + 1.0)
    base = torch.floor(position)
    frac = position - base
    bits = torch.tensor(
        [[(corner >> axis) & 1 for axis in range(3)] for corner in range(8)], device=coords.device
    )  # [8, 3]
    cell = base.long()[:, None, :] + bits[None]  # [S, 8, 3]
    weight = torch.where(bits[None].bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(dim=-1)  # [S, 8]
    limits = torch.tensor([width, height, depth], device=coords.device)
    inside = ((cell >= 0) & (cell < limits)).all(dim=-1)
    cell = torch.where(inside[..., None], cell, torch.zeros_like(cell))
    row = ((index[:, None] * depth + cell[..., 2]) * height + cell[..., 1]) * width + cell[..., 0]
    values = flat[row]  # [S, 8, C]
    return ((weight * inside)[..., None] * values).sum(dim=1)


def _candidate_samples(origin, direction, tmin, tmax, primpos, primrot, primscale, dt):
    """(ray, primitive, step) triples that may produce a valid sample, for one batch element.

    origin/direction [R,3], tmin/tmax [R], primitives [K,...]. No gradient flows through here:
    the candidates only decide which samples to evaluate.
    """
    num_rays = origin.shape[0]
    num_prims = primpos.shape[0]
    rays_per_chunk = max(1, _PAIR_CHUNK // max(num_prims, 1))
    ray_ids, prim_ids, first_steps, counts = [], [], [], []
    with torch.no_grad():
        # Bounding sphere of each box (half-diagonal; inf for a zero scale).
        radius2 = torch.nan_to_num((1.0 / primscale).square().sum(-1), nan=torch.inf)
        for start in range(0, num_rays, rays_per_chunk):
            stop = min(start + rays_per_chunk, num_rays)
            o = origin[start:stop]
            d = direction[start:stop]
            seg_tmin = tmin[start:stop]
            seg_tmax = tmax[start:stop]
            # 1. All pairs against bounding spheres, as two [R,3] x [3,K] products (cheap): the
            #    squared distance of each centre from each ray's line, and where along it. Points
            #    are taken relative to the chunk's mean origin to limit cancellation, and the
            #    test gets slack for what cancellation remains: it may only keep too much.
            anchor = o.mean(0)
            o_rel = o - anchor
            c_rel = primpos - anchor
            dd = (d * d).sum(-1, keepdim=True)  # [R,1]
            along = d @ c_rel.T - (o_rel * d).sum(-1, keepdim=True)  # (c - o).d  [R,K]
            centre2 = (c_rel * c_rel).sum(-1)[None] - 2.0 * (o_rel @ c_rel.T) + (o_rel * o_rel).sum(-1, keepdim=True)
            dist2 = centre2 - along.square() / dd
            reach2 = radius2[None] + 1e-5 * (centre2.abs() + 1.0)
            t_centre = along / dd
            half = torch.sqrt((reach2 - dist2).clamp(min=0.0) / dd)
            maybe = (dist2 <= reach2) & (t_centre + half >= seg_tmin[:, None]) & (t_centre - half <= seg_tmax[:, None])
            maybe &= (seg_tmin < seg_tmax)[:, None]
            ray_local, prim = maybe.nonzero(as_tuple=True)
            if ray_local.numel() == 0:
                continue
            # 2. The exact slab test in each surviving primitive's frame (t is unchanged by it).
            rot = primrot[prim]
            local_origin = torch.einsum("si,sij->sj", o[ray_local] - primpos[prim], rot) * primscale[prim]
            local_dir = torch.einsum("si,sij->sj", d[ray_local], rot) * primscale[prim]
            t_a = (-1.0 - local_origin) / local_dir
            t_b = (1.0 - local_origin) / local_dir
            # A zero direction component leaves the slab either always (inside) or never crossed.
            parallel = local_dir == 0
            inside_slab = local_origin.abs() <= 1.0
            t_near_axis = torch.where(parallel, torch.where(inside_slab, -torch.inf, torch.inf), torch.minimum(t_a, t_b))
            t_far_axis = torch.where(parallel, torch.where(inside_slab, torch.inf, -torch.inf), torch.maximum(t_a, t_b))
            ray = ray_local + start
            near = torch.maximum(t_near_axis.amax(dim=-1), tmin[ray])
            far = torch.minimum(t_far_axis.amin(dim=-1), tmax[ray])
            hit = near <= far
            ray, prim, near, far = ray[hit], prim[hit], near[hit], far[hit]
            # Steps whose t_i may fall in [near, far], padded by one step on each side (and past
            # tmax) for rounding; the exact tests on y and t < tmax decide.
            last_step = torch.ceil((tmax[ray] - tmin[ray]) / dt)
            step_lo = (torch.ceil((near - tmin[ray]) / dt) - 1).clamp(min=0)
            step_hi = torch.minimum(torch.floor((far - tmin[ray]) / dt) + 1, last_step)
            count = (step_hi - step_lo + 1).clamp(min=0).long()
            keep = count > 0
            ray_ids.append(ray[keep])
            prim_ids.append(prim[keep])
            first_steps.append(step_lo[keep].long())
            counts.append(count[keep])
    if not ray_ids:
        empty = torch.zeros(0, dtype=torch.long, device=origin.device)
        return empty, empty, empty
    ray_ids = torch.cat(ray_ids)
    prim_ids = torch.cat(prim_ids)
    first_steps = torch.cat(first_steps)
    counts = torch.cat(counts)
    total = int(counts.sum())
    sample_pair = torch.repeat_interleave(torch.arange(counts.numel(), device=origin.device), counts, output_size=total)
    pair_start = torch.cumsum(counts, 0) - counts
    steps = first_steps[sample_pair] + (torch.arange(total, device=origin.device) - pair_start[sample_pair])
    return ray_ids[sample_pair], prim_ids[sample_pair], steps


def mvp_raymarch(
    raypos: torch.Tensor,  # [N, H, W, 3]
    raydir: torch.Tensor,  # [N, H, W, 3]
    stepsize: float,
    tminmax: torch.Tensor,  # [N, H, W, 2]
    primpos: torch.Tensor,  # [N, K, 3]
    primrot: torch.Tensor,  # [N, K, 3, 3]
    primscale: torch.Tensor,  # [N, K, 3]
    template: torch.Tensor,  # [N, K, TD, TH, TW, 4]
    warp: torch.Tensor | None = None,  # [N, K, WD, WH, WW, 3]
    *,
    fadescale: float = 8.0,
    fadeexp: float = 8.0,
) -> torch.Tensor:
    """Same contract as `ava.kernels.reference.mvp_raymarch`; returns rayrgba [N, H, W, 4]."""
    n, h, w, _ = raypos.shape
    num_prims = primpos.shape[1]
    dtype = raypos.dtype
    dt = torch.tensor(stepsize, dtype=dtype, device=raypos.device)
    num_rays = h * w
    origin = raypos.reshape(n, num_rays, 3)
    direction = raydir.reshape(n, num_rays, 3)
    tmin = tminmax[..., 0].reshape(n, num_rays)
    tmax = tminmax[..., 1].reshape(n, num_rays)

    outputs = []
    for b in range(n):
        ray, prim, step = _candidate_samples(
            origin[b], direction[b], tmin[b], tmax[b], primpos[b], primrot[b], primscale[b], dt
        )
        t = tmin[b, ray] + step.to(dtype) * dt
        point = origin[b, ray] + direction[b, ray] * t[:, None]
        local = torch.einsum("si,sij->sj", point - primpos[b, prim], primrot[b, prim]) * primscale[b, prim]
        valid = (local.abs() < 1.0).all(dim=-1) & (t < tmax[b, ray])
        ray, prim, step, local = ray[valid], prim[valid], step[valid], local[valid]

        fade = torch.exp(-fadescale * (local.abs() ** fadeexp).sum(dim=-1))
        coords = local if warp is None else _trilinear_gather(warp[b], prim, local)
        sample = _trilinear_gather(template[b], prim, coords)
        sample_alpha = sample[:, 3] * fade * dt

        # Composite in (ray, step, primitive) order with the closed-form saturation weights.
        max_step = int(step.max()) + 1 if step.numel() else 1
        order = torch.argsort((ray * max_step + step) * max(num_prims, 1) + prim)
        ray_sorted = ray[order]
        alpha_sorted = sample_alpha[order].double()
        running = torch.cumsum(alpha_sorted, 0)
        first_of_ray = torch.ones_like(ray_sorted, dtype=torch.bool)
        first_of_ray[1:] = ray_sorted[1:] != ray_sorted[:-1]
        positions = torch.arange(ray_sorted.numel(), device=raypos.device)
        ray_start = torch.cummax(torch.where(first_of_ray, positions, 0), 0).values
        # Not detached: the offset must carry the other rays' alphas so their gradients cancel.
        after = running - (running - alpha_sorted)[ray_start]
        before = after - alpha_sorted
        weight = (after.clamp(max=1.0) - before.clamp(max=1.0)).to(dtype)

        color = raypos.new_zeros(num_rays, 3).index_add(0, ray_sorted, weight[:, None] * sample[order, :3])
        alpha = raypos.new_zeros(num_rays).index_add(0, ray_sorted, weight)
        outputs.append(torch.cat([color, alpha[:, None]], dim=-1))
    return torch.stack(outputs).reshape(n, h, w, 4)
