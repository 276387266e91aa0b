"""Triton kernels of the MVP raymarcher: tile culling, forward march and backward march.

Work is organised in screen tiles of TILE_H x TILE_W rays (one Triton program each):

1. `_bounds_kernel` summarises each tile's rays conservatively: a ball holding every origin, a
   cone holding every direction and the range of t.
2. `_cull_kernel` tests primitives' bounding spheres against those bounds and writes, per tile,
   the primitives that some ray of the tile may hit, in ascending index, each with the range of t
   in which that can happen. It runs twice (count, then write), so lists have exact sizes and no
   cap. A first pass over super-tiles narrows the candidates of the second, fine pass; both are
   independent of primitive order.
3. `_forward_kernel` marches the tile's rays in lockstep: at each step every ray sits at its own
   t_i = tmin + i*dt (all within one dt of each other), and the tile's list is scanned in ascending
   index, skipping entries whose t range misses the current window. Empty stretches are jumped
   over, and the tile stops once every ray has saturated or left its segment.
4. `_backward_kernel` re-marches the same samples in the same order (so saturation decisions are
   reproduced exactly) and scatters gradients with atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# One warp per tile of 8 rows x 4 columns. Measured on an H100 at the reference workload
# (tools/tune_raymarch.py): 8x4 beat 8x8, 4x8 and 16x4 in both forward and backward; smaller
# tiles get shorter primitive lists and diverge less.
TILE_H = 8
TILE_W = 4
SUPER_TILE = 4  # super-tiles are SUPER_TILE x SUPER_TILE tiles


# --------------------------------------------------------------------------------------------
# Culling
# --------------------------------------------------------------------------------------------

BOUNDS = 13  # floats per tile summary, see _bounds_kernel


@triton.jit
def _tile_rays(tile, tiles_y, tiles_x, height, width, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    per_image = tiles_y * tiles_x
    batch = tile // per_image
    rest = tile % per_image
    lane = tl.arange(0, TILE_H * TILE_W)
    row = (rest // tiles_x) * TILE_H + lane // TILE_W
    col = (rest % tiles_x) * TILE_W + lane % TILE_W
    in_image = (row < height) & (col < width)
    ray = (batch * height + row) * width + col
    ray = tl.where(in_image, ray, 0)
    return batch, ray, in_image


@triton.jit
def _bounds_kernel(
    raypos_ptr, raydir_ptr, tminmax_ptr, out_ptr, tiles_y, tiles_x, height, width,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr,
):
    """Conservative summary of one tile's rays (those with tmin < tmax): a ball holding every
    origin (centre 0-2, radius 3), a cone holding every direction (axis 4-6, cos 7, sin 8 of
    the half-angle), the t range (9, 10) and max/min of 1/|d| (11, 12) to turn distances into t.
    A tile without such rays gets t range (inf, -inf)."""
    tile = tl.program_id(0)
    batch, ray, in_image = _tile_rays(tile, tiles_y, tiles_x, height, width, TILE_H, TILE_W)
    ox = tl.load(raypos_ptr + ray * 3 + 0)
    oy = tl.load(raypos_ptr + ray * 3 + 1)
    oz = tl.load(raypos_ptr + ray * 3 + 2)
    dx = tl.load(raydir_ptr + ray * 3 + 0)
    dy = tl.load(raydir_ptr + ray * 3 + 1)
    dz = tl.load(raydir_ptr + ray * 3 + 2)
    tmin = tl.load(tminmax_ptr + ray * 2 + 0)
    tmax = tl.load(tminmax_ptr + ray * 2 + 1)
    live = in_image & (tmin < tmax)
    count = tl.maximum(tl.sum(live.to(tl.float32), 0), 1.0)
    cx = tl.sum(tl.where(live, ox, 0.0), 0) / count
    cy = tl.sum(tl.where(live, oy, 0.0), 0) / count
    cz = tl.sum(tl.where(live, oz, 0.0), 0) / count
    spread = tl.sqrt((ox - cx) * (ox - cx) + (oy - cy) * (oy - cy) + (oz - cz) * (oz - cz))
    oradius = tl.max(tl.where(live, spread, 0.0), 0)
    dnorm = tl.sqrt(dx * dx + dy * dy + dz * dz)
    ux = dx / dnorm
    uy = dy / dnorm
    uz = dz / dnorm
    ax = tl.sum(tl.where(live, ux, 0.0), 0)
    ay = tl.sum(tl.where(live, uy, 0.0), 0)
    az = tl.sum(tl.where(live, uz, 0.0), 0)
    axis_len = tl.sqrt(ax * ax + ay * ay + az * az)
    inv_len = 1.0 / tl.maximum(axis_len, 1e-30)
    ax = ax * inv_len
    ay = ay * inv_len
    az = az * inv_len
    min_dot = tl.min(tl.where(live, ux * ax + uy * ay + uz * az, 2.0), 0)
    # Half-angle from the largest cross product with the axis (precise for narrow cones),
    # widened for rounding; directions spreading over a hemisphere or more accept everything.
    kx = uy * az - uz * ay
    ky = uz * ax - ux * az
    kz = ux * ay - uy * ax
    sin_t = tl.max(tl.where(live, tl.sqrt(kx * kx + ky * ky + kz * kz), 0.0), 0) * 1.001 + 1e-6
    wide = (min_dot <= 0.0) | (axis_len < 1e-6 * count) | (sin_t >= 1.0)
    sin_t = tl.where(wide, 1.0, tl.minimum(sin_t, 1.0))
    cos_t = tl.where(wide, -1.0, tl.sqrt(tl.maximum(1.0 - sin_t * sin_t, 0.0)))
    t_lo = tl.min(tl.where(live, tmin, float("inf")), 0)
    t_hi = tl.max(tl.where(live, tmax, float("-inf")), 0)
    inv_dmin = tl.max(tl.where(live, 1.0 / dnorm, 0.0), 0)
    inv_dmax = tl.min(tl.where(live, 1.0 / dnorm, float("inf")), 0)
    out = out_ptr + tile * 13
    tl.store(out + 0, cx)
    tl.store(out + 1, cy)
    tl.store(out + 2, cz)
    tl.store(out + 3, oradius)
    tl.store(out + 4, ax)
    tl.store(out + 5, ay)
    tl.store(out + 6, az)
    tl.store(out + 7, cos_t)
    tl.store(out + 8, sin_t)
    tl.store(out + 9, t_lo)
    tl.store(out + 10, t_hi)
    tl.store(out + 11, inv_dmin)
    tl.store(out + 12, inv_dmax)


@triton.jit
def _cull_kernel(
    bounds_ptr,  # [num_tiles, 13] tile summaries
    pos_ptr, scale_ptr,  # primitives, [N, K, 3] each
    num_prims,
    tiles_y, tiles_x,  # this level's tile grid
    parent_tiles_y, parent_tiles_x,  # the coarse level's grid (fine pass only)
    cand_start_ptr, cand_count_ptr, cand_ptr,  # the coarse level's lists (fine pass only)
    out_start_ptr,  # [num_tiles] (write pass) where the tile's hits go
    out_count_ptr,  # [num_tiles] (count pass) number of hits
    out_prim_ptr,  # hits: primitive index
    out_trange_ptr,  # hits: t range [2]
    ALL_CANDIDATES: tl.constexpr,  # coarse pass: every primitive of the batch element
    SUPER: tl.constexpr,  # tiles per coarse tile side (fine pass)
    WRITE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Tests the bounding spheres of a tile's candidate primitives against the tile's rays and
    counts (WRITE=False) or writes (WRITE=True) the hits, ascending in index, each with the t
    range in which the tile's rays can be inside the sphere."""
    tile = tl.program_id(0)
    bp = bounds_ptr + tile * 13
    ox = tl.load(bp + 0)
    oy = tl.load(bp + 1)
    oz = tl.load(bp + 2)
    oradius = tl.load(bp + 3)
    ax = tl.load(bp + 4)
    ay = tl.load(bp + 5)
    az = tl.load(bp + 6)
    cos_t = tl.load(bp + 7)
    sin_t = tl.load(bp + 8)
    t_lo = tl.load(bp + 9)
    t_hi = tl.load(bp + 10)
    inv_dmin = tl.load(bp + 11)
    inv_dmax = tl.load(bp + 12)
    per_image = tiles_y * tiles_x
    batch = tile // per_image
    if ALL_CANDIDATES:
        cand_start = 0
        cand_count = num_prims
    else:
        rest = tile % per_image
        parent = (batch * parent_tiles_y + (rest // tiles_x) // SUPER) * parent_tiles_x + (rest % tiles_x) // SUPER
        cand_start = tl.load(cand_start_ptr + parent)
        cand_count = tl.load(cand_count_ptr + parent)
    if t_lo > t_hi:
        cand_count = 0
    if WRITE:
        cursor = tl.load(out_start_ptr + tile)
    else:
        cursor = 0
    lanes = tl.arange(0, BLOCK)
    prim_base = batch.to(tl.int64) * num_prims
    for first in range(0, cand_count, BLOCK):
        in_range = first + lanes < cand_count
        if ALL_CANDIDATES:
            prim = first + lanes
        else:
            prim = tl.load(cand_ptr + cand_start + first + lanes, mask=in_range, other=0)
        index = prim_base + prim
        cx = tl.load(pos_ptr + index * 3 + 0, mask=in_range, other=0.0) - ox
        cy = tl.load(pos_ptr + index * 3 + 1, mask=in_range, other=0.0) - oy
        cz = tl.load(pos_ptr + index * 3 + 2, mask=in_range, other=0.0) - oz
        # Bounding sphere of the box: its half-diagonal, sqrt(sum (1/s_j)^2) (inf when s_j = 0).
        hx = 1.0 / tl.abs(tl.load(scale_ptr + index * 3 + 0, mask=in_range, other=1.0))
        hy = 1.0 / tl.abs(tl.load(scale_ptr + index * 3 + 1, mask=in_range, other=1.0))
        hz = 1.0 / tl.abs(tl.load(scale_ptr + index * 3 + 2, mask=in_range, other=1.0))
        radius = tl.sqrt(hx * hx + hy * hy + hz * hz)
        dist = tl.sqrt(cx * cx + cy * cy + cz * cz)
        reach = radius + oradius
        reach = reach + 1e-5 + 1e-4 * reach  # rounding slack: culling may only err towards keeping
        # Distance from the centre to the cone's surface in the plane of axis and centre
        # (perpendicular part from a cross product, which keeps precision for narrow cones). The
        # closest cone point is the apex when the centre lies behind the apex's normal plane.
        along = cx * ax + cy * ay + cz * az
        ux = cy * az - cz * ay
        uy = cz * ax - cx * az
        uz = cx * ay - cy * ax
        perp = tl.sqrt(ux * ux + uy * uy + uz * uz)
        to_surface = perp * cos_t - along * sin_t
        ahead = along * cos_t + perp * sin_t >= 0.0
        in_cone = (dist <= reach) | ((to_surface <= reach) & ahead) | (dist * 0.0 + cos_t <= 0.0)
        near = dist - reach
        far = dist + reach
        seg_lo = tl.maximum(tl.minimum(near * inv_dmin, near * inv_dmax), t_lo)
        seg_hi = tl.minimum(far * inv_dmin, t_hi)
        hit = in_range & in_cone & (seg_lo <= seg_hi)
        hit_i = hit.to(tl.int32)
        if WRITE:
            slot = cursor + tl.cumsum(hit_i, 0) - 1
            tl.store(out_prim_ptr + slot, prim, mask=hit)
            tl.store(out_trange_ptr + slot * 2, seg_lo, mask=hit)
            tl.store(out_trange_ptr + slot * 2 + 1, seg_hi, mask=hit)
        cursor += tl.sum(hit_i, 0)
    if not WRITE:
        tl.store(out_count_ptr + tile, cursor)


class TileLists:
    """Per-tile primitive lists (ascending index) with their t ranges."""

    def __init__(self, start, count, prims, tranges, tiles_y, tiles_x):
        self.start, self.count, self.prims, self.tranges = start, count, prims, tranges
        self.tiles_y, self.tiles_x = tiles_y, tiles_x


def _cull_level(raypos, raydir, tminmax, primpos, primscale, tile_h, tile_w, parent=None, super_tile=1):
    n, h, w, _ = raypos.shape
    tiles_y, tiles_x = triton.cdiv(h, tile_h), triton.cdiv(w, tile_w)
    num_tiles = n * tiles_y * tiles_x
    device = raypos.device
    bounds = torch.empty(num_tiles, BOUNDS, dtype=torch.float32, device=device)
    _bounds_kernel[(num_tiles,)](
        raypos, raydir, tminmax, bounds, tiles_y, tiles_x, h, w,
        TILE_H=tile_h, TILE_W=tile_w, num_warps=max(1, min(8, tile_h * tile_w // 128)),
    )
    counts = torch.empty(num_tiles, dtype=torch.int32, device=device)
    if parent is None:
        parent_args = (1, 1, counts, counts, counts)
    else:
        parent_args = (parent.tiles_y, parent.tiles_x, parent.start, parent.count, parent.prims)
    common = dict(ALL_CANDIDATES=parent is None, SUPER=super_tile, BLOCK=128, num_warps=4)
    args = (bounds, primpos, primscale, primpos.shape[1], tiles_y, tiles_x, *parent_args)
    _cull_kernel[(num_tiles,)](*args, counts, counts, counts, bounds, WRITE=False, **common)
    starts = (torch.cumsum(counts, 0, dtype=torch.int32) - counts)
    total = int(starts[-1] + counts[-1]) if num_tiles else 0  # the one host sync of this level
    prims = torch.empty(max(total, 1), dtype=torch.int32, device=device)
    tranges = torch.empty(max(total, 1), 2, dtype=torch.float32, device=device)
    _cull_kernel[(num_tiles,)](*args, starts, counts, prims, tranges, WRITE=True, **common)
    return TileLists(starts, counts, prims, tranges, tiles_y, tiles_x)


def build_tile_lists(raypos, raydir, tminmax, primpos, primscale) -> TileLists:
    """Coarse pass over super-tiles against every primitive, then the fine pass over tiles
    against their super-tile's hits."""
    coarse = _cull_level(raypos, raydir, tminmax, primpos, primscale, TILE_H * SUPER_TILE, TILE_W * SUPER_TILE)
    return _cull_level(raypos, raydir, tminmax, primpos, primscale, TILE_H, TILE_W, coarse, SUPER_TILE)


# --------------------------------------------------------------------------------------------
# Sampling helpers shared by the forward and backward kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _load_prim(pos_ptr, rot_ptr, scale_ptr, index):
    p = pos_ptr + index * 3
    r = rot_ptr + index * 9
    s = scale_ptr + index * 3
    return (
        tl.load(p + 0), tl.load(p + 1), tl.load(p + 2),
        tl.load(r + 0), tl.load(r + 1), tl.load(r + 2),
        tl.load(r + 3), tl.load(r + 4), tl.load(r + 5),
        tl.load(r + 6), tl.load(r + 7), tl.load(r + 8),
        tl.load(s + 0), tl.load(s + 1), tl.load(s + 2),
    )


@triton.jit
def _grid_coords(x, y, z, D: tl.constexpr, H: tl.constexpr, W: tl.constexpr):
    """Continuous voxel coordinates (align_corners=True), clamped far outside the grid so that
    integer conversion cannot overflow; clamped points still have every corner outside."""
    gx = tl.minimum(tl.maximum((x + 1.0) * 0.5 * (W - 1), -2.0), W + 1.0)
    gy = tl.minimum(tl.maximum((y + 1.0) * 0.5 * (H - 1), -2.0), H + 1.0)
    gz = tl.minimum(tl.maximum((z + 1.0) * 0.5 * (D - 1), -2.0), D + 1.0)
    return gx, gy, gz


@triton.jit
def _corners(x, y, z, mask, D: tl.constexpr, H: tl.constexpr, W: tl.constexpr):
    """The 8 trilinear corners of [-1, 1] coords, all at once as [BLOCK, 8] tensors (fewer,
    wider operations: faster compiled and much faster under the interpreter). Returns the
    per-axis weights of each corner, the voxel index and whether the corner is in the grid."""
    gx, gy, gz = _grid_coords(x, y, z, D, H, W)
    fx = tl.floor(gx)
    fy = tl.floor(gy)
    fz = tl.floor(gz)
    corner = tl.arange(0, 8)
    bit_x = (corner & 1)[None, :]
    bit_y = ((corner >> 1) & 1)[None, :]
    bit_z = ((corner >> 2) & 1)[None, :]
    wx = (gx - fx)[:, None]
    wy = (gy - fy)[:, None]
    wz = (gz - fz)[:, None]
    lx = tl.where(bit_x == 1, wx, 1.0 - wx)
    ly = tl.where(bit_y == 1, wy, 1.0 - wy)
    lz = tl.where(bit_z == 1, wz, 1.0 - wz)
    cx = fx.to(tl.int32)[:, None] + bit_x
    cy = fy.to(tl.int32)[:, None] + bit_y
    cz = fz.to(tl.int32)[:, None] + bit_z
    ok = mask[:, None] & (cx >= 0) & (cx < W) & (cy >= 0) & (cy < H) & (cz >= 0) & (cz < D)
    voxel = (cz * H + cy) * W + cx
    return lx, ly, lz, voxel, ok


@triton.jit
def _trilinear(base_ptr, x, y, z, mask, D: tl.constexpr, H: tl.constexpr, W: tl.constexpr, C: tl.constexpr):
    """Trilinear fetch of a [D, H, W, C] volume (C <= 4) at [-1, 1] coords; zero outside.
    Returns [BLOCK, 4] (channels >= C are zero)."""
    lx, ly, lz, voxel, ok = _corners(x, y, z, mask, D, H, W)
    channel = tl.arange(0, 4)[None, None, :]
    value = tl.load(
        base_ptr + voxel[:, :, None] * C + channel,
        mask=ok[:, :, None] & (channel < C),
        other=0.0,
    )
    return tl.sum((lx * ly * lz)[:, :, None] * value, axis=1)


@triton.jit
def _column(block, index: tl.constexpr):
    """Extracts channel `index` of a [BLOCK, 4] tensor as [BLOCK]."""
    channel = tl.arange(0, 4)
    return tl.sum(tl.where(channel[None, :] == index, block, 0.0), axis=1)


@triton.jit
def _tile_t_span(list_start, list_count, tranges_ptr, BLOCK: tl.constexpr):
    lanes = tl.arange(0, BLOCK)
    span_lo = tl.full((BLOCK,), float("inf"), tl.float32)
    span_hi = tl.full((BLOCK,), float("-inf"), tl.float32)
    for first in range(0, list_count, BLOCK):
        m = first + lanes < list_count
        lo = tl.load(tranges_ptr + (list_start + first + lanes) * 2, mask=m, other=float("inf"))
        hi = tl.load(tranges_ptr + (list_start + first + lanes) * 2 + 1, mask=m, other=float("-inf"))
        span_lo = tl.minimum(span_lo, lo)
        span_hi = tl.maximum(span_hi, hi)
    return tl.min(span_lo, 0), tl.max(span_hi, 0)


@triton.jit
def _load_rays(raypos_ptr, raydir_ptr, tminmax_ptr, ray):
    return (
        tl.load(raypos_ptr + ray * 3 + 0), tl.load(raypos_ptr + ray * 3 + 1), tl.load(raypos_ptr + ray * 3 + 2),
        tl.load(raydir_ptr + ray * 3 + 0), tl.load(raydir_ptr + ray * 3 + 1), tl.load(raydir_ptr + ray * 3 + 2),
        tl.load(tminmax_ptr + ray * 2 + 0), tl.load(tminmax_ptr + ray * 2 + 1),
    )


@triton.jit
def _window(step, tmin, tmax, in_image, saturated, span_hi, dt):
    """Each ray's t at `step`, which rays still march, the tile's lowest t and whether to go on."""
    t = tmin + step * dt
    live = in_image & (t < tmax) & (~saturated)
    window_lo = tl.min(tl.where(live, t, float("inf")), 0)
    return t, live, window_lo, window_lo <= span_hi


@triton.jit
def _advance(step, touched, next_lo, tmin, dt):
    """One step on; after a step where no entry was near, jump to just before the next entry."""
    step_on = step + 1.0
    if touched == 0:
        jump = tl.maximum(tl.ceil((next_lo - tmin) / dt) - 1.0, step_on)
        step_on = tl.where(next_lo < float("inf"), jump, step_on)
    return step_on


@triton.jit
def _to_local(px, py, pz, p0, p1, p2, r00, r01, r02, r10, r11, r12, r20, r21, r22, s0, s1, s2):
    """q = x - p, l = q @ R (unscaled local coordinates) and y = l * s."""
    qx = px - p0
    qy = py - p1
    qz = pz - p2
    lx = qx * r00 + qy * r10 + qz * r20
    ly = qx * r01 + qy * r11 + qz * r21
    lz = qx * r02 + qy * r12 + qz * r22
    return qx, qy, qz, lx, ly, lz, lx * s0, ly * s1, lz * s2


@triton.jit
def _sample(prim, yx, yy, yz, inside, template_ptr, warp_ptr, fadescale, fadeexp,
            TD: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
            WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, HAS_WARP: tl.constexpr):
    """|y|^fadeexp per axis, the fade, the (warped) template coordinates and the RGBA sample."""
    pow_x = tl.exp2(fadeexp * tl.log2(tl.abs(yx)))
    pow_y = tl.exp2(fadeexp * tl.log2(tl.abs(yy)))
    pow_z = tl.exp2(fadeexp * tl.log2(tl.abs(yz)))
    fade = tl.exp(-fadescale * (pow_x + pow_y + pow_z))
    if HAS_WARP:
        warped = _trilinear(warp_ptr + prim * (WD * WH * WW * 3), yx, yy, yz, inside, WD, WH, WW, 3)
        cx = _column(warped, 0)
        cy = _column(warped, 1)
        cz = _column(warped, 2)
    else:
        cx = yx
        cy = yy
        cz = yz
    sample = _trilinear(template_ptr + prim * (TD * TH * TW * 4), cx, cy, cz, inside, TD, TH, TW, 4)
    return pow_x, pow_y, pow_z, fade, cx, cy, cz, sample


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@triton.jit
def _forward_kernel(
    raypos_ptr, raydir_ptr, tminmax_ptr,
    pos_ptr, rot_ptr, scale_ptr, template_ptr, warp_ptr,
    list_start_ptr, list_count_ptr, list_prim_ptr, list_trange_ptr,
    out_ptr,  # [N*H*W, 4] rgba
    sat_ptr,  # [N*H*W, 4] rgb of the saturating sample and a flag
    tiles_y, tiles_x, height, width, num_prims,
    dt, fadescale, fadeexp,
    TD: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
    WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr,
    HAS_WARP: tl.constexpr, SAVE_SAT: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr,
):
    tile = tl.program_id(0)
    list_count = tl.load(list_count_ptr + tile)
    if list_count > 0:
        list_start = tl.load(list_start_ptr + tile)
        batch, ray, in_image = _tile_rays(tile, tiles_y, tiles_x, height, width, TILE_H, TILE_W)
        ox, oy, oz, dx, dy, dz, tmin, tmax = _load_rays(raypos_ptr, raydir_ptr, tminmax_ptr, ray)
        span_lo, span_hi = _tile_t_span(list_start, list_count, list_trange_ptr, 64)
        saturated = tl.zeros_like(tmin) > 1.0
        acc_r = tl.zeros_like(tmin)
        acc_g = tl.zeros_like(tmin)
        acc_b = tl.zeros_like(tmin)
        acc_a = tl.zeros_like(tmin)
        sat_r = tl.zeros_like(tmin)
        sat_g = tl.zeros_like(tmin)
        sat_b = tl.zeros_like(tmin)
        # First step of each ray: one step before the first possible hit (rounding slack).
        step = tl.maximum(tl.ceil((span_lo - tmin) / dt) - 1.0, 0.0)
        t, live, window_lo, go = _window(step, tmin, tmax, in_image, saturated, span_hi, dt)
        while go:
            window_hi = tl.max(tl.where(live, t, float("-inf")), 0)
            next_lo = span_lo * 0.0 + float("inf")
            touched = list_count * 0
            px = ox + dx * t
            py = oy + dy * t
            pz = oz + dz * t
            for entry in range(list_count):
                e = list_start + entry
                e_lo = tl.load(list_trange_ptr + e * 2)
                e_hi = tl.load(list_trange_ptr + e * 2 + 1)
                if e_lo > window_hi:
                    next_lo = tl.minimum(next_lo, e_lo)
                if (e_hi >= window_lo) & (e_lo <= window_hi):
                    touched += 1
                    prim = tl.load(list_prim_ptr + e).to(tl.int64) + batch * num_prims
                    p0, p1, p2, r00, r01, r02, r10, r11, r12, r20, r21, r22, s0, s1, s2 = _load_prim(
                        pos_ptr, rot_ptr, scale_ptr, prim
                    )
                    qx, qy, qz, lx, ly, lz, yx, yy, yz = _to_local(
                        px, py, pz, p0, p1, p2, r00, r01, r02, r10, r11, r12, r20, r21, r22, s0, s1, s2
                    )
                    inside = live & (~saturated) & (tl.abs(yx) < 1.0) & (tl.abs(yy) < 1.0) & (tl.abs(yz) < 1.0)
                    if tl.max(inside.to(tl.int32), 0) > 0:
                        pow_x, pow_y, pow_z, fade, cx, cy, cz, sample = _sample(
                            prim, yx, yy, yz, inside, template_ptr, warp_ptr, fadescale, fadeexp,
                            TD, TH, TW, WD, WH, WW, HAS_WARP,
                        )
                        rgb_r = _column(sample, 0)
                        rgb_g = _column(sample, 1)
                        rgb_b = _column(sample, 2)
                        alpha = _column(sample, 3) * fade * dt
                        new_a = acc_a + alpha
                        weight = tl.where(inside, tl.minimum(new_a, 1.0) - acc_a, 0.0)
                        acc_r += weight * rgb_r
                        acc_g += weight * rgb_g
                        acc_b += weight * rgb_b
                        acc_a += weight
                        becomes = inside & (new_a >= 1.0)
                        sat_r = tl.where(becomes, rgb_r, sat_r)
                        sat_g = tl.where(becomes, rgb_g, sat_g)
                        sat_b = tl.where(becomes, rgb_b, sat_b)
                        saturated = saturated | becomes
            step = _advance(step, touched, next_lo, tmin, dt)
            t, live, window_lo, go = _window(step, tmin, tmax, in_image, saturated, span_hi, dt)
        out = out_ptr + ray * 4
        tl.store(out + 0, acc_r, mask=in_image)
        tl.store(out + 1, acc_g, mask=in_image)
        tl.store(out + 2, acc_b, mask=in_image)
        tl.store(out + 3, acc_a, mask=in_image)
        if SAVE_SAT:
            sp = sat_ptr + ray * 4
            tl.store(sp + 0, sat_r, mask=in_image)
            tl.store(sp + 1, sat_g, mask=in_image)
            tl.store(sp + 2, sat_b, mask=in_image)
            tl.store(sp + 3, saturated.to(tl.float32), mask=in_image)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


@triton.jit
def _trilinear_backward(
    base_ptr, grad_base_ptr, x, y, z, mask, upstream,
    D: tl.constexpr, H: tl.constexpr, W: tl.constexpr, C: tl.constexpr,
):
    """Scatters upstream [BLOCK, 4] into the volume's gradient and returns d(value . upstream)
    with respect to the [-1, 1] coordinates (x, y, z)."""
    lx, ly, lz, voxel, ok = _corners(x, y, z, mask, D, H, W)
    channel = tl.arange(0, 4)[None, None, :]
    cmask = ok[:, :, None] & (channel < C)
    offset = voxel[:, :, None] * C + channel
    value = tl.load(base_ptr + offset, mask=cmask, other=0.0)
    tl.atomic_add(grad_base_ptr + offset, (lx * ly * lz)[:, :, None] * upstream[:, None, :], mask=cmask, sem="relaxed")
    dot = tl.sum(value * upstream[:, None, :], axis=2)
    corner = tl.arange(0, 8)
    sign_x = tl.where((corner & 1) == 1, 1.0, -1.0)[None, :]
    sign_y = tl.where(((corner >> 1) & 1) == 1, 1.0, -1.0)[None, :]
    sign_z = tl.where(((corner >> 2) & 1) == 1, 1.0, -1.0)[None, :]
    grad_x = tl.sum(dot * sign_x * ly * lz, axis=1)
    grad_y = tl.sum(dot * lx * sign_y * lz, axis=1)
    grad_z = tl.sum(dot * lx * ly * sign_z, axis=1)
    # Chain through the voxel-coordinate map (x+1)/2*(W-1); clamped coordinates have no corners
    # inside, so their gradient is zero already.
    return grad_x * (0.5 * (W - 1)), grad_y * (0.5 * (H - 1)), grad_z * (0.5 * (D - 1))


@triton.jit
def _backward_kernel(
    raypos_ptr, raydir_ptr, tminmax_ptr,
    pos_ptr, rot_ptr, scale_ptr, template_ptr, warp_ptr,
    list_start_ptr, list_count_ptr, list_prim_ptr, list_trange_ptr,
    sat_ptr, grad_out_ptr,
    grad_prim_ptr, grad_template_ptr, grad_warp_ptr,
    tiles_y, tiles_x, height, width, num_prims,
    dt, fadescale, fadeexp,
    TD: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
    WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr,
    HAS_WARP: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr,
):
    tile = tl.program_id(0)
    list_count = tl.load(list_count_ptr + tile)
    if list_count > 0:
        list_start = tl.load(list_start_ptr + tile)
        batch, ray, in_image = _tile_rays(tile, tiles_y, tiles_x, height, width, TILE_H, TILE_W)
        ox, oy, oz, dx, dy, dz, tmin, tmax = _load_rays(raypos_ptr, raydir_ptr, tminmax_ptr, ray)
        g_r = tl.load(grad_out_ptr + ray * 4 + 0, mask=in_image, other=0.0)
        g_g = tl.load(grad_out_ptr + ray * 4 + 1, mask=in_image, other=0.0)
        g_b = tl.load(grad_out_ptr + ray * 4 + 2, mask=in_image, other=0.0)
        g_a = tl.load(grad_out_ptr + ray * 4 + 3, mask=in_image, other=0.0)
        final_r = tl.load(sat_ptr + ray * 4 + 0)
        final_g = tl.load(sat_ptr + ray * 4 + 1)
        final_b = tl.load(sat_ptr + ray * 4 + 2)
        ends_saturated = tl.load(sat_ptr + ray * 4 + 3) > 0.5
        span_lo, span_hi = _tile_t_span(list_start, list_count, list_trange_ptr, 64)

        saturated = tl.zeros_like(tmin) > 1.0
        acc_a = tl.zeros_like(tmin)
        step = tl.maximum(tl.ceil((span_lo - tmin) / dt) - 1.0, 0.0)
        t, live, window_lo, go = _window(step, tmin, tmax, in_image, saturated, span_hi, dt)
        voxels = TD * TH * TW
        wvoxels = WD * WH * WW
        channel = tl.arange(0, 4)
        while go:
            window_hi = tl.max(tl.where(live, t, float("-inf")), 0)
            next_lo = span_lo * 0.0 + float("inf")
            touched = list_count * 0
            px = ox + dx * t
            py = oy + dy * t
            pz = oz + dz * t
            for entry in range(list_count):
                e = list_start + entry
                e_lo = tl.load(list_trange_ptr + e * 2)
                e_hi = tl.load(list_trange_ptr + e * 2 + 1)
                if e_lo > window_hi:
                    next_lo = tl.minimum(next_lo, e_lo)
                if (e_hi >= window_lo) & (e_lo <= window_hi):
                    touched += 1
                    prim = tl.load(list_prim_ptr + e).to(tl.int64) + batch * num_prims
                    p0, p1, p2, r00, r01, r02, r10, r11, r12, r20, r21, r22, s0, s1, s2 = _load_prim(
                        pos_ptr, rot_ptr, scale_ptr, prim
                    )
                    qx, qy, qz, lx, ly, lz, yx, yy, yz = _to_local(
                        px, py, pz, p0, p1, p2, r00, r01, r02, r10, r11, r12, r20, r21, r22, s0, s1, s2
                    )
                    inside = live & (~saturated) & (tl.abs(yx) < 1.0) & (tl.abs(yy) < 1.0) & (tl.abs(yz) < 1.0)
                    if tl.max(inside.to(tl.int32), 0) > 0:
                        pow_x, pow_y, pow_z, fade, cx, cy, cz, sample = _sample(
                            prim, yx, yy, yz, inside, template_ptr, warp_ptr, fadescale, fadeexp,
                            TD, TH, TW, WD, WH, WW, HAS_WARP,
                        )
                        rgb_r = _column(sample, 0)
                        rgb_g = _column(sample, 1)
                        rgb_b = _column(sample, 2)
                        raw_a = _column(sample, 3)
                        alpha = raw_a * fade * dt
                        new_a = acc_a + alpha
                        becomes = inside & (new_a >= 1.0)
                        weight = tl.where(inside, tl.minimum(new_a, 1.0) - acc_a, 0.0)
                        # d output / d alpha_j: zero at the saturating sample (it takes 1 - A);
                        # before it, the colour it displaces from the saturating sample.
                        grad_alpha = tl.where(
                            ends_saturated,
                            g_r * (rgb_r - final_r) + g_g * (rgb_g - final_g) + g_b * (rgb_b - final_b),
                            g_r * rgb_r + g_g * rgb_g + g_b * rgb_b + g_a,
                        )
                        grad_alpha = tl.where(inside & (~becomes), grad_alpha, 0.0)
                        grad_raw_a = grad_alpha * fade * dt
                        grad_fade = grad_alpha * raw_a * dt
                        upstream = tl.where(
                            channel[None, :] == 3,
                            grad_raw_a[:, None],
                            weight[:, None] * tl.where(
                                channel[None, :] == 0, g_r[:, None],
                                tl.where(channel[None, :] == 1, g_g[:, None], g_b[:, None]),
                            ),
                        )
                        upstream = tl.where(inside[:, None], upstream, 0.0)
                        gcx, gcy, gcz = _trilinear_backward(
                            template_ptr + prim * voxels * 4, grad_template_ptr + prim * voxels * 4,
                            cx, cy, cz, inside, upstream, TD, TH, TW, 4,
                        )
                        if HAS_WARP:
                            warp_up = tl.where(
                                channel[None, :] == 0, gcx[:, None],
                                tl.where(channel[None, :] == 1, gcy[:, None], gcz[:, None]),
                            )
                            warp_up = tl.where((channel[None, :] < 3) & inside[:, None], warp_up, 0.0)
                            gyx, gyy, gyz = _trilinear_backward(
                                warp_ptr + prim * wvoxels * 3, grad_warp_ptr + prim * wvoxels * 3,
                                yx, yy, yz, inside, warp_up, WD, WH, WW, 3,
                            )
                        else:
                            gyx = gcx
                            gyy = gcy
                            gyz = gcz
                        # Fade: d/dy exp(-fs * sum |y|^fe) = -fs * fe * |y|^(fe-1) * sign(y) * fade.
                        fade_term = grad_fade * fade * (-fadescale * fadeexp)
                        gyx += fade_term * tl.where(yx != 0.0, pow_x / yx, 0.0)
                        gyy += fade_term * tl.where(yy != 0.0, pow_y / yy, 0.0)
                        gyz += fade_term * tl.where(yz != 0.0, pow_z / yz, 0.0)
                        gyx = tl.where(inside, gyx, 0.0)
                        gyy = tl.where(inside, gyy, 0.0)
                        gyz = tl.where(inside, gyz, 0.0)
                        # y = (q @ R) * s with q = x - p: per lane, d/dp = -R h, d/dR[i][j] = q_i h_j
                        # and d/ds_j = l_j dL/dy_j, with h = s * dL/dy and l = q @ R. The 15 values are
                        # packed in one [BLOCK, 16] tile so that the tile reduces them in a single
                        # pass and 16 lanes issue one relaxed atomic each.
                        hx = gyx * s0
                        hy = gyy * s1
                        hz = gyz * s2
                        col = tl.arange(0, 16)[None, :]
                        rot_col = col - 3
                        q_i = tl.where(rot_col // 3 == 0, qx[:, None], tl.where(rot_col // 3 == 1, qy[:, None], qz[:, None]))
                        h_j = tl.where(rot_col % 3 == 0, hx[:, None], tl.where(rot_col % 3 == 1, hy[:, None], hz[:, None]))
                        pos_part = tl.where(
                            col == 0, (r00 * hx + r01 * hy + r02 * hz)[:, None],
                            tl.where(col == 1, (r10 * hx + r11 * hy + r12 * hz)[:, None], (r20 * hx + r21 * hy + r22 * hz)[:, None]),
                        )
                        scale_part = tl.where(col == 12, (gyx * lx)[:, None], tl.where(col == 13, (gyy * ly)[:, None], (gyz * lz)[:, None]))
                        packed = tl.where(col < 3, -pos_part, tl.where(col < 12, q_i * h_j, tl.where(col < 15, scale_part, 0.0)))
                        tl.atomic_add(grad_prim_ptr + prim * 16 + tl.arange(0, 16), tl.sum(packed, axis=0), sem="relaxed")
                        acc_a += weight
                        saturated = saturated | becomes
            step = _advance(step, touched, next_lo, tmin, dt)
            t, live, window_lo, go = _window(step, tmin, tmax, in_image, saturated, span_hi, dt)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _volume_dims(volume):
    if volume is None:
        return 1, 1, 1
    return volume.shape[2], volume.shape[3], volume.shape[4]


def tile_grid(height: int, width: int) -> tuple[int, int]:
    return triton.cdiv(height, TILE_H), triton.cdiv(width, TILE_W)


def forward(raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp,
            fadescale, fadeexp, save_saturation):
    """Returns rayrgba [N,H,W,4], raysat ([N,H,W,4] if save_saturation else empty) and the tile
    lists (start, count, prims, tranges) that the backward pass reuses."""
    n, h, w, _ = raypos.shape
    lists = build_tile_lists(raypos, raydir, tminmax, primpos, primscale)
    rayrgba = torch.zeros(n, h, w, 4, dtype=torch.float32, device=raypos.device)
    raysat = torch.zeros(n, h, w, 4, dtype=torch.float32, device=raypos.device) if save_saturation else None
    td, th, tw = _volume_dims(template)
    wd, wh, ww = _volume_dims(warp)
    num_tiles = n * lists.tiles_y * lists.tiles_x
    _forward_kernel[(num_tiles,)](
        raypos, raydir, tminmax, primpos, primrot, primscale, template,
        warp if warp is not None else template,
        lists.start, lists.count, lists.prims, lists.tranges,
        rayrgba, raysat if raysat is not None else rayrgba,
        lists.tiles_y, lists.tiles_x, h, w, primpos.shape[1],
        float(stepsize), float(fadescale), float(fadeexp),
        TD=td, TH=th, TW=tw, WD=wd, WH=wh, WW=ww,
        HAS_WARP=warp is not None, SAVE_SAT=save_saturation,
        TILE_H=TILE_H, TILE_W=TILE_W, num_warps=max(1, TILE_H * TILE_W // 32),
    )
    if raysat is None:
        raysat = rayrgba.new_zeros(0)
    return rayrgba, raysat, lists.start, lists.count, lists.prims, lists.tranges


def backward(grad_rgba, raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp,
             fadescale, fadeexp, raysat, list_start, list_count, list_prims, list_tranges):
    """Gradients (primpos, primrot, primscale, template, warp or None) from the forward's
    saturation record and tile lists."""
    n, h, w, _ = raypos.shape
    tiles_y, tiles_x = tile_grid(h, w)
    n_prims = primpos.shape[1]
    # Packed per-primitive gradient: position (3), rotation (9, row-major), scale (3), padding.
    grad_prim = torch.zeros(n, n_prims, 16, dtype=torch.float32, device=primpos.device)
    grad_template = torch.zeros_like(template)
    grad_warp = torch.zeros_like(warp) if warp is not None else None
    td, th, tw = _volume_dims(template)
    wd, wh, ww = _volume_dims(warp)
    num_tiles = n * tiles_y * tiles_x
    _backward_kernel[(num_tiles,)](
        raypos, raydir, tminmax, primpos, primrot, primscale, template,
        warp if warp is not None else template,
        list_start, list_count, list_prims, list_tranges,
        raysat, grad_rgba.contiguous(),
        grad_prim, grad_template,
        grad_warp if grad_warp is not None else grad_template,
        tiles_y, tiles_x, h, w, n_prims,
        float(stepsize), float(fadescale), float(fadeexp),
        TD=td, TH=th, TW=tw, WD=wd, WH=wh, WW=ww,
        HAS_WARP=warp is not None,
        TILE_H=TILE_H, TILE_W=TILE_W, num_warps=max(1, TILE_H * TILE_W // 32),
    )
    grad_pos = grad_prim[..., 0:3]
    grad_rot = grad_prim[..., 3:12].reshape(n, n_prims, 3, 3)
    grad_scale = grad_prim[..., 12:15]
    return grad_pos, grad_rot, grad_scale, grad_template, grad_warp
