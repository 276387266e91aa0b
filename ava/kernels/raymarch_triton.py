"""Triton kernels of the MVP raymarcher: tile culling, forward march and backward march.

Work is organised in screen tiles of TILE_H x TILE_W rays (one Triton program each):

1. `_bounds_kernel` summarises each tile's rays conservatively: a ball holding every origin, a
   cone holding every direction and the range of t.
2. `_cull_kernel` tests primitives' bounding spheres against those bounds and writes, per tile,
   the primitives that some ray of the tile may hit, in ascending index, each with the range of t
   in which that can happen. It runs twice (count, then write) on two levels: super-tiles against
   every primitive, then tiles against their super-tile's list. Both levels write into buffers of
   a capacity the host computes from the shapes (`list_capacities`), so nothing is read back to
   size them; a tile whose list does not fit is marked by its end offset lying past the capacity,
   and every reader then falls back to testing that tile's candidates on the fly (its super-tile's
   list, or every primitive), which gives the same samples in the same order. Lists never drop a
   primitive, whatever the capacity.
3. `_march` is the one march loop, which the forward and backward kernels both call: the tile's
   rays advance in lockstep, at step i every ray sitting at its own t_i = tmin + i*dt; at each step
   the tile's list is scanned SCAN_BLOCK entries at a time, the entries whose t range meets the
   current window are sampled in ascending index, empty stretches are jumped over, and the tile
   stops once every ray has saturated or left its segment. The forward composites; the backward
   re-marches the same samples in the same order (so saturation decisions are reproduced exactly)
   and scatters gradients with atomics.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

# One warp per tile of 8 rows x 4 columns. Measured on an H100 at the reference workload
# (tools/tune_raymarch.py): 8x4 beat 8x8, 4x8 and 16x4 in both forward and backward; smaller
# tiles get shorter primitive lists and diverge less.
TILE_H = 8
TILE_W = 4
SUPER_TILE = 4  # super-tiles are SUPER_TILE x SUPER_TILE tiles
# List entries the march tests per vector operation (a power of two). 1 is the scalar scan of
# ava's first kernels (one entry, two loads and two branches at a time); tools/bench_raymarch.py
# --scan-blocks compares block sizes.
SCAN_BLOCK = 32
# Trilinear fetches: all 8 corners at once as [rays, 8, 4] tensors (True), or one corner after
# another (False); None: at once under Triton's interpreter (8 times fewer numpy calls), one at a
# time compiled. One at a time needs far fewer registers: compiled for sm_90 (Triton 3.9), the
# forward kernel takes 128 registers and 48 bytes of stack instead of 255 and 984 bytes of
# spills per thread, the backward 241 and none instead of 255 and 2128, so a multiprocessor
# holds twice the forward's warps and neither spills; tools/bench_raymarch.py --corners compares.
TRILINEAR_CORNERS_AT_ONCE: bool | None = None

# List capacity (entries) per level, from the shapes: per tile plus per primitive, times
# ListCapacity.scale. On the reference head scene (tools/head_scene.py: 4 x 512x334 rays, 16384
# primitives) the fine lists hold about 0.55 M entries against a capacity of 1.39 M, and the
# coarse lists well under their 0.43 M.
COARSE_PER_TILE, COARSE_PER_PRIM = 128, 4
FINE_PER_TILE, FINE_PER_PRIM = 16, 16
NO_PRIM = tl.constexpr(2147483647)  # larger than any primitive index (int32 max)


# --------------------------------------------------------------------------------------------
# Tiles and their bounds
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


# --------------------------------------------------------------------------------------------
# Culling: candidates, the sphere test, the lists
# --------------------------------------------------------------------------------------------


@triton.jit
def _sphere_hits(bp, index, valid, pos_ptr, scale_ptr):
    """Tests the bounding spheres of primitives `index` (global, [BLOCK]) against the tile whose
    summary starts at `bp`. Returns (hit, seg_lo, seg_hi): whether some ray of the tile may come
    inside the sphere, and the range of t in which it can. Conservative: it may only err towards
    keeping a primitive."""
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
    cx = tl.load(pos_ptr + index * 3 + 0, mask=valid, other=0.0) - ox
    cy = tl.load(pos_ptr + index * 3 + 1, mask=valid, other=0.0) - oy
    cz = tl.load(pos_ptr + index * 3 + 2, mask=valid, other=0.0) - oz
    # Bounding sphere of the box: its half-diagonal, sqrt(sum (1/s_j)^2) (inf when s_j = 0).
    hx = 1.0 / tl.abs(tl.load(scale_ptr + index * 3 + 0, mask=valid, other=1.0))
    hy = 1.0 / tl.abs(tl.load(scale_ptr + index * 3 + 1, mask=valid, other=1.0))
    hz = 1.0 / tl.abs(tl.load(scale_ptr + index * 3 + 2, mask=valid, other=1.0))
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
    return valid & in_cone & (seg_lo <= seg_hi), seg_lo, seg_hi


@triton.jit
def _parent_candidates(tile, tiles_y, tiles_x, num_prims, parent_tiles_y, parent_tiles_x,
                       parent_end_ptr, parent_count_ptr, parent_capacity, SUPER: tl.constexpr):
    """(source, start, count) of the candidates of a fine tile: source 1 is the slice
    [start, start + count) of its super-tile's list; 2 is every primitive (start 0), used when
    that list overflowed its capacity and was not written."""
    per_image = tiles_y * tiles_x
    batch = tile // per_image
    rest = tile % per_image
    parent = (batch * parent_tiles_y + (rest // tiles_x) // SUPER) * parent_tiles_x + (rest % tiles_x) // SUPER
    end = tl.load(parent_end_ptr + parent)
    count = tl.load(parent_count_ptr + parent)
    start = end - count
    source = count * 0 + 1
    if (count > 0) & (end > parent_capacity):
        source = source + 1
        start = start * 0
        count = count * 0 + num_prims
    return source, start, count


@triton.jit
def _candidate_chunk(first, source, start, count, parent_prim_ptr, BLOCK: tl.constexpr):
    """Primitive indices (within the batch element) of candidates first .. first + BLOCK - 1 of a
    source (see _parent_candidates), and which of them exist."""
    lanes = first + tl.arange(0, BLOCK)
    valid = lanes < count
    if source == 1:
        prim = tl.load(parent_prim_ptr + start + lanes, mask=valid, other=0)
    else:
        prim = lanes
    return prim, valid


@triton.jit
def _cull_kernel(
    bounds_ptr,  # [num_tiles, 13] tile summaries
    pos_ptr, scale_ptr,  # primitives, [N, K, 3] each
    num_prims,
    tiles_y, tiles_x,  # this level's tile grid
    parent_tiles_y, parent_tiles_x,  # the coarse level's grid (fine pass only)
    parent_end_ptr, parent_count_ptr, parent_prim_ptr, parent_capacity,  # the coarse lists (fine pass only)
    out_end_ptr,  # [num_tiles] (write pass) inclusive cumulative count: the tile's list ends here
    out_count_ptr,  # [num_tiles] (count pass writes, write pass reads) number of hits
    out_prim_ptr,  # hits: primitive index
    out_trange_ptr,  # hits: t range [2] (when WRITE_TRANGE)
    out_capacity,  # entries the output buffers hold
    COARSE: tl.constexpr,  # coarse pass: every primitive of the batch element is a candidate
    SUPER: tl.constexpr,  # tiles per coarse tile side (fine pass)
    WRITE: tl.constexpr,
    WRITE_TRANGE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Counts (WRITE=False) or writes (WRITE=True) the hits of one tile, ascending in index. A
    tile whose list would end past the capacity writes nothing: its readers test its candidates
    on the fly instead."""
    tile = tl.program_id(0)
    bp = bounds_ptr + tile * 13
    batch = tile // (tiles_y * tiles_x)
    if COARSE:
        source = 2
        start = 0
        cand_count = num_prims
    else:
        source, start, cand_count = _parent_candidates(
            tile, tiles_y, tiles_x, num_prims, parent_tiles_y, parent_tiles_x,
            parent_end_ptr, parent_count_ptr, parent_capacity, SUPER,
        )
    if tl.load(bp + 9) > tl.load(bp + 10):  # no live ray in the tile
        cand_count = cand_count * 0
    cursor = cand_count * 0
    if WRITE:
        hits = tl.load(out_count_ptr + tile)
        end = tl.load(out_end_ptr + tile)
        cursor = end - hits
        if end > out_capacity:
            cand_count = cand_count * 0
    prim_base = batch.to(tl.int64) * num_prims
    for first in range(0, cand_count, BLOCK):
        prim, valid = _candidate_chunk(first, source, start, cand_count, parent_prim_ptr, BLOCK)
        hit, seg_lo, seg_hi = _sphere_hits(bp, prim_base + prim, valid, pos_ptr, scale_ptr)
        hit_i = hit.to(tl.int32)
        if WRITE:
            slot = cursor + tl.cumsum(hit_i, 0) - 1
            tl.store(out_prim_ptr + slot, prim, mask=hit)
            if WRITE_TRANGE:
                tl.store(out_trange_ptr + slot * 2, seg_lo, mask=hit)
                tl.store(out_trange_ptr + slot * 2 + 1, seg_hi, mask=hit)
        cursor += tl.sum(hit_i, 0)
    if not WRITE:
        tl.store(out_count_ptr + tile, cursor)


class ListCapacity:
    """How many entries each culling level's list buffer holds: a bound from the shapes
    (list_capacities) times `scale`.

    An overflow never changes results (the readers fall back to on-the-fly tests), only speed, so
    the check is lazy: every eager call copies the two levels' totals to pinned host memory
    without waiting, and a later call that finds the copy done doubles `scale` (as often as
    needed) if a level overflowed. Nothing is read back while a CUDA graph is being captured;
    a captured graph keeps the capacity it was captured with.
    """

    def __init__(self) -> None:
        self.scale = 1.0
        self.grow = True
        self.overflows = 0  # calls seen to overflow (checked lazily)
        self._pending = None

    def observe(self, totals: torch.Tensor, capacities: tuple[int, int]) -> None:
        """totals: int32 [2] (coarse, fine) entries the lists needed in this call (on its device)."""
        if not self.grow:
            return
        if totals.device.type != "cuda":
            self._check(totals.tolist(), capacities)
            return
        if torch.cuda.is_current_stream_capturing():
            return
        self.poll()
        if self._pending is None:
            host = torch.empty(2, dtype=torch.int32, pin_memory=True)
            host.copy_(totals, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (host, event, capacities)

    def poll(self) -> None:
        """Applies a finished read-back, if any (never waits)."""
        if self._pending is not None and self._pending[1].query():
            host, _, capacities = self._pending
            self._pending = None
            self._check(host.tolist(), capacities)

    def _check(self, totals, capacities) -> None:
        ratio = max(total / max(capacity, 1) for total, capacity in zip(totals, capacities))
        if ratio > 1.0:
            self.overflows += 1
            self.scale *= 2.0 ** math.ceil(math.log2(ratio * 1.25))


CAPACITY = ListCapacity()


def list_capacities(n: int, height: int, width: int, num_prims: int) -> tuple[int, int]:
    """(coarse, fine) list capacities in entries for a batch of n images of height x width rays
    and num_prims primitives per image (see ListCapacity)."""
    CAPACITY.poll()
    coarse_tiles = n * triton.cdiv(height, TILE_H * SUPER_TILE) * triton.cdiv(width, TILE_W * SUPER_TILE)
    fine_tiles = n * triton.cdiv(height, TILE_H) * triton.cdiv(width, TILE_W)
    scale = CAPACITY.scale
    coarse = COARSE_PER_TILE * coarse_tiles + COARSE_PER_PRIM * n * num_prims
    fine = FINE_PER_TILE * fine_tiles + FINE_PER_PRIM * n * num_prims
    return max(1, math.ceil(scale * coarse)), max(1, math.ceil(scale * fine))


class TileLists:
    """Both levels' per-tile primitive lists (ascending index): for each tile the inclusive end of
    its list (`end`, int32) and its length (`count`); the entries (`prims`, and for the fine
    level their t ranges `tranges` [capacity, 2]); the fine tiles' bounds [num_tiles, 13]. A
    tile with count > 0 and end > capacity (= len(prims)) overflowed and has no entries."""

    def __init__(self, coarse_end, coarse_count, coarse_prims, end, count, prims, tranges, bounds):
        self.coarse_end, self.coarse_count, self.coarse_prims = coarse_end, coarse_count, coarse_prims
        self.end, self.count, self.prims, self.tranges, self.bounds = end, count, prims, tranges, bounds

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.coarse_end, self.coarse_count, self.coarse_prims, self.end, self.count, self.prims,
                self.tranges, self.bounds)

    def totals(self) -> torch.Tensor:
        """int32 [2]: the entries each level needed (coarse, fine), capacity or not."""
        return torch.stack([self.coarse_end[-1], self.end[-1]])


def _cull_level(raypos, raydir, tminmax, primpos, primscale, tile_h, tile_w, capacity, parent=None,
                super_tile=1):
    """(bounds, end, count, prims, tranges) of one level; `parent` is the coarse level's
    (end, count, prims) for the fine pass."""
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
    prims = torch.empty(capacity, dtype=torch.int32, device=device)
    fine = parent is not None
    tranges = torch.empty(capacity if fine else 1, 2, dtype=torch.float32, device=device)
    if fine:
        parent_args = (triton.cdiv(h, tile_h * super_tile), triton.cdiv(w, tile_w * super_tile), *parent)
    else:
        parent_args = (1, 1, counts, counts, counts, 1)
    common = dict(COARSE=not fine, SUPER=super_tile, WRITE_TRANGE=fine, BLOCK=128, num_warps=4)
    args = (bounds, primpos, primscale, primpos.shape[1], tiles_y, tiles_x, *parent_args)
    _cull_kernel[(num_tiles,)](*args, counts, counts, prims, tranges, capacity, WRITE=False, **common)
    ends = torch.cumsum(counts, 0, dtype=torch.int32)
    _cull_kernel[(num_tiles,)](*args, ends, counts, prims, tranges, capacity, WRITE=True, **common)
    return bounds, ends, counts, prims, tranges


def build_tile_lists(raypos, raydir, tminmax, primpos, primscale, capacities=None) -> TileLists:
    """Coarse pass over super-tiles against every primitive, then the fine pass over tiles
    against their super-tile's hits. `capacities` (coarse, fine): entries per level (default
    list_capacities). Nothing is read back to the host."""
    n, h, w, _ = raypos.shape
    coarse_capacity, fine_capacity = capacities or list_capacities(n, h, w, primpos.shape[1])
    _, coarse_end, coarse_count, coarse_prims, _ = _cull_level(
        raypos, raydir, tminmax, primpos, primscale, TILE_H * SUPER_TILE, TILE_W * SUPER_TILE, coarse_capacity)
    bounds, end, count, prims, tranges = _cull_level(
        raypos, raydir, tminmax, primpos, primscale, TILE_H, TILE_W, fine_capacity,
        (coarse_end, coarse_count, coarse_prims, coarse_capacity), SUPER_TILE)
    return TileLists(coarse_end, coarse_count, coarse_prims, end, count, prims, tranges, bounds)


# --------------------------------------------------------------------------------------------
# Sampling helpers
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
    """The 8 trilinear corners of [-1, 1] coords, all at once as [BLOCK, 8] tensors (fewer, wider
    operations, but many more registers held: see TRILINEAR_CORNERS_AT_ONCE). Returns the
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
def _corner_weights(gx, gy, gz, fx, fy, fz, corner: tl.constexpr):
    """Per-axis weights and integer coordinates of one of the 8 corners (bit 0: x, 1: y, 2: z)."""
    if corner & 1:
        lx = gx - fx
    else:
        lx = 1.0 - (gx - fx)
    if (corner >> 1) & 1:
        ly = gy - fy
    else:
        ly = 1.0 - (gy - fy)
    if (corner >> 2) & 1:
        lz = gz - fz
    else:
        lz = 1.0 - (gz - fz)
    cx = fx.to(tl.int32) + (corner & 1)
    cy = fy.to(tl.int32) + ((corner >> 1) & 1)
    cz = fz.to(tl.int32) + ((corner >> 2) & 1)
    return lx, ly, lz, cx, cy, cz


@triton.jit
def _trilinear(base_ptr, x, y, z, mask, D: tl.constexpr, H: tl.constexpr, W: tl.constexpr, C: tl.constexpr,
               AT_ONCE: tl.constexpr):
    """Trilinear fetch of a [D, H, W, C] volume (C <= 4) at [-1, 1] coords; zero outside.
    Returns [BLOCK, 4] (channels >= C are zero)."""
    channel = tl.arange(0, 4)[None, :]
    if AT_ONCE:
        lx, ly, lz, voxel, ok = _corners(x, y, z, mask, D, H, W)
        value = tl.load(base_ptr + voxel[:, :, None] * C + channel[None], mask=ok[:, :, None] & (channel[None] < C),
                        other=0.0)
        result = tl.sum((lx * ly * lz)[:, :, None] * value, axis=1)
    else:
        gx, gy, gz = _grid_coords(x, y, z, D, H, W)
        fx = tl.floor(gx)
        fy = tl.floor(gy)
        fz = tl.floor(gz)
        result = (x * 0.0)[:, None] + (channel * 0).to(tl.float32)
        for corner in tl.static_range(8):
            lx, ly, lz, cx, cy, cz = _corner_weights(gx, gy, gz, fx, fy, fz, corner)
            ok = mask & (cx >= 0) & (cx < W) & (cy >= 0) & (cy < H) & (cz >= 0) & (cz < D)
            voxel = (cz * H + cy) * W + cx
            value = tl.load(base_ptr + voxel[:, None] * C + channel, mask=ok[:, None] & (channel < C), other=0.0)
            result += (lx * ly * lz)[:, None] * value
    return result


@triton.jit
def _trilinear_backward(
    base_ptr, grad_base_ptr, x, y, z, mask, upstream,
    D: tl.constexpr, H: tl.constexpr, W: tl.constexpr, C: tl.constexpr, AT_ONCE: tl.constexpr,
):
    """Scatters upstream [BLOCK, 4] into the volume's gradient and returns d(value . upstream)
    with respect to the [-1, 1] coordinates (x, y, z)."""
    if AT_ONCE:
        lx, ly, lz, voxel, ok = _corners(x, y, z, mask, D, H, W)
        channel = tl.arange(0, 4)[None, None, :]
        cmask = ok[:, :, None] & (channel < C)
        offset = voxel[:, :, None] * C + channel
        value = tl.load(base_ptr + offset, mask=cmask, other=0.0)
        tl.atomic_add(grad_base_ptr + offset, (lx * ly * lz)[:, :, None] * upstream[:, None, :], mask=cmask,
                      sem="relaxed")
        dot = tl.sum(value * upstream[:, None, :], axis=2)
        corner = tl.arange(0, 8)
        sign_x = tl.where((corner & 1) == 1, 1.0, -1.0)[None, :]
        sign_y = tl.where(((corner >> 1) & 1) == 1, 1.0, -1.0)[None, :]
        sign_z = tl.where(((corner >> 2) & 1) == 1, 1.0, -1.0)[None, :]
        grad_x = tl.sum(dot * sign_x * ly * lz, axis=1)
        grad_y = tl.sum(dot * lx * sign_y * lz, axis=1)
        grad_z = tl.sum(dot * lx * ly * sign_z, axis=1)
    else:
        gx, gy, gz = _grid_coords(x, y, z, D, H, W)
        fx = tl.floor(gx)
        fy = tl.floor(gy)
        fz = tl.floor(gz)
        channel = tl.arange(0, 4)[None, :]
        grad_x = x * 0.0
        grad_y = x * 0.0
        grad_z = x * 0.0
        for corner in tl.static_range(8):
            lx, ly, lz, cx, cy, cz = _corner_weights(gx, gy, gz, fx, fy, fz, corner)
            ok = mask & (cx >= 0) & (cx < W) & (cy >= 0) & (cy < H) & (cz >= 0) & (cz < D)
            cmask = ok[:, None] & (channel < C)
            offset = (((cz * H + cy) * W + cx) * C)[:, None] + channel
            value = tl.load(base_ptr + offset, mask=cmask, other=0.0)
            tl.atomic_add(grad_base_ptr + offset, (lx * ly * lz)[:, None] * upstream, mask=cmask, sem="relaxed")
            dot = tl.sum(value * upstream, axis=1)
            # d(weight)/dx of this corner: +-ly*lz (plus when the corner is the upper one in x).
            if corner & 1:
                grad_x += dot * ly * lz
            else:
                grad_x -= dot * ly * lz
            if (corner >> 1) & 1:
                grad_y += dot * lx * lz
            else:
                grad_y -= dot * lx * lz
            if (corner >> 2) & 1:
                grad_z += dot * lx * ly
            else:
                grad_z -= dot * lx * ly
    # Chain through the voxel-coordinate map (x+1)/2*(W-1); clamped coordinates have no corners
    # inside, so their gradient is zero already.
    return grad_x * (0.5 * (W - 1)), grad_y * (0.5 * (H - 1)), grad_z * (0.5 * (D - 1))


@triton.jit
def _column(block, index: tl.constexpr):
    """Extracts channel `index` of a [BLOCK, 4] tensor as [BLOCK]."""
    channel = tl.arange(0, 4)
    return tl.sum(tl.where(channel[None, :] == index, block, 0.0), axis=1)


@triton.jit
def _channels(c0, c1, c2, c3):
    """[BLOCK, 4] from four [BLOCK] columns."""
    channel = tl.arange(0, 4)[None, :]
    return tl.where(channel == 0, c0[:, None], tl.where(channel == 1, c1[:, None],
                                                         tl.where(channel == 2, c2[:, None], c3[:, None])))


@triton.jit
def _load_rays(raypos_ptr, raydir_ptr, tminmax_ptr, ray):
    return (
        tl.load(raypos_ptr + ray * 3 + 0), tl.load(raypos_ptr + ray * 3 + 1), tl.load(raypos_ptr + ray * 3 + 2),
        tl.load(raydir_ptr + ray * 3 + 0), tl.load(raydir_ptr + ray * 3 + 1), tl.load(raydir_ptr + ray * 3 + 2),
        tl.load(tminmax_ptr + ray * 2 + 0), tl.load(tminmax_ptr + ray * 2 + 1),
    )


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
            WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, HAS_WARP: tl.constexpr, AT_ONCE: tl.constexpr):
    """|y|^fadeexp per axis, the fade, the (warped) template coordinates and the RGBA sample."""
    pow_x = tl.exp2(fadeexp * tl.log2(tl.abs(yx)))
    pow_y = tl.exp2(fadeexp * tl.log2(tl.abs(yy)))
    pow_z = tl.exp2(fadeexp * tl.log2(tl.abs(yz)))
    fade = tl.exp(-fadescale * (pow_x + pow_y + pow_z))
    if HAS_WARP:
        warped = _trilinear(warp_ptr + prim * (WD * WH * WW * 3), yx, yy, yz, inside, WD, WH, WW, 3, AT_ONCE)
        cx = _column(warped, 0)
        cy = _column(warped, 1)
        cz = _column(warped, 2)
    else:
        cx = yx
        cy = yy
        cz = yz
    sample = _trilinear(template_ptr + prim * (TD * TH * TW * 4), cx, cy, cz, inside, TD, TH, TW, 4, AT_ONCE)
    return pow_x, pow_y, pow_z, fade, cx, cy, cz, sample


# --------------------------------------------------------------------------------------------
# The march
# --------------------------------------------------------------------------------------------


@triton.jit
def _tile_source(tile, end_ptr, count_ptr, capacity, tiles_y, tiles_x, num_prims, parent_tiles_y, parent_tiles_x,
                 parent_end_ptr, parent_count_ptr, parent_capacity, SUPER: tl.constexpr):
    """(source, start, count) of the entries a tile marches over: source 0 is its own list
    [start, start + count); when that list overflowed, 1 (its super-tile's list) or 2 (every
    primitive), whose t ranges _entry_chunk computes on the fly."""
    end = tl.load(end_ptr + tile)
    count = tl.load(count_ptr + tile)
    start = end - count
    source = count * 0
    if (count > 0) & (end > capacity):
        source, start, count = _parent_candidates(
            tile, tiles_y, tiles_x, num_prims, parent_tiles_y, parent_tiles_x,
            parent_end_ptr, parent_count_ptr, parent_capacity, SUPER,
        )
    return source, start, count


@triton.jit
def _entry_chunk(first, source, start, count, prim_ptr, trange_ptr, parent_prim_ptr, bp, pos_ptr, scale_ptr,
                 prim_base, BLOCK: tl.constexpr):
    """Entries first .. first + BLOCK - 1 of a tile's source: primitive index (within the batch
    element) and t range. Entries past the end, and candidates the sphere test rejects, get the
    empty range (inf, -inf), which no window meets."""
    if source == 0:
        lanes = first + tl.arange(0, BLOCK)
        valid = lanes < count
        prim = tl.load(prim_ptr + start + lanes, mask=valid, other=0)
        e_lo = tl.load(trange_ptr + (start + lanes) * 2, mask=valid, other=float("inf"))
        e_hi = tl.load(trange_ptr + (start + lanes) * 2 + 1, mask=valid, other=float("-inf"))
    else:
        prim, valid = _candidate_chunk(first, source, start, count, parent_prim_ptr, BLOCK)
        hit, e_lo, e_hi = _sphere_hits(bp, prim_base + prim, valid, pos_ptr, scale_ptr)
        e_lo = tl.where(hit, e_lo, float("inf"))
        e_hi = tl.where(hit, e_hi, float("-inf"))
    return prim, e_lo, e_hi


@triton.jit
def _tile_t_span(source, start, count, prim_ptr, trange_ptr, parent_prim_ptr, bp, pos_ptr, scale_ptr, prim_base):
    """Lowest and highest t of any entry of the tile's source."""
    span_lo = tl.full((64,), float("inf"), tl.float32)
    span_hi = tl.full((64,), float("-inf"), tl.float32)
    for first in range(0, count, 64):
        _, e_lo, e_hi = _entry_chunk(first, source, start, count, prim_ptr, trange_ptr, parent_prim_ptr, bp,
                                     pos_ptr, scale_ptr, prim_base, 64)
        span_lo = tl.minimum(span_lo, e_lo)
        span_hi = tl.maximum(span_hi, e_hi)
    return tl.min(span_lo, 0), tl.max(span_hi, 0)


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
def _composite(inside, sample, fade, dt, acc_r, acc_g, acc_b, acc_a, sat_r, sat_g, sat_b, saturated):
    """Forward: adds one primitive's samples to the rays (docs/raymarching.md's accumulation rule)
    and records, for the backward, the colour of the sample that saturates a ray."""
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
    return acc_r, acc_g, acc_b, acc_a, sat_r, sat_g, sat_b, saturated | becomes


@triton.jit
def _alpha_gradient(inside, sample, fade, dt, acc_a, grad_out, final, ends_saturated):
    """The composite's derivative at one primitive's samples. Returns the sample's weight, where
    it saturates the ray, the gradient of the template's RGBA (weight x colour gradient for rgb,
    d/d raw alpha for alpha) and d/d fade. grad_out and final are [BLOCK, 4]: the output's
    gradient and the colour of the ray's saturating sample."""
    raw_a = _column(sample, 3)
    new_a = acc_a + raw_a * fade * dt
    becomes = inside & (new_a >= 1.0)
    weight = tl.where(inside, tl.minimum(new_a, 1.0) - acc_a, 0.0)
    # d output / d alpha_j: zero at the saturating sample (it takes 1 - A); before it, the colour
    # it displaces from the saturating sample.
    rgb = tl.arange(0, 4)[None, :] < 3
    towards = tl.where(rgb, tl.where(ends_saturated[:, None], sample - final, sample), 0.0)
    grad_alpha = tl.sum(towards * grad_out, axis=1)
    grad_alpha = tl.where(ends_saturated, grad_alpha, grad_alpha + _column(grad_out, 3))
    grad_alpha = tl.where(inside & (~becomes), grad_alpha, 0.0)
    upstream = tl.where(tl.arange(0, 4)[None, :] == 3, (grad_alpha * fade * dt)[:, None], weight[:, None] * grad_out)
    upstream = tl.where(inside[:, None], upstream, 0.0)
    return weight, becomes, upstream, grad_alpha * raw_a * dt


@triton.jit
def _local_gradient(prim, inside, upstream, grad_fade, fade, pow_x, pow_y, pow_z, yx, yy, yz, cx, cy, cz,
                    template_ptr, grad_template_ptr, warp_ptr, grad_warp_ptr, fadescale, fadeexp,
                    TD: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                    WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, HAS_WARP: tl.constexpr,
                    AT_ONCE: tl.constexpr):
    """Scatters the template's (and warp's) gradient and returns d/dy at the samples' local
    coordinates y, through the template fetch, the warp and the fade."""
    voxels = TD * TH * TW
    gcx, gcy, gcz = _trilinear_backward(
        template_ptr + prim * voxels * 4, grad_template_ptr + prim * voxels * 4,
        cx, cy, cz, inside, upstream, TD, TH, TW, 4, AT_ONCE,
    )
    if HAS_WARP:
        wvoxels = WD * WH * WW
        warp_up = tl.where(inside[:, None], _channels(gcx, gcy, gcz, gcz * 0.0), 0.0)
        gyx, gyy, gyz = _trilinear_backward(
            warp_ptr + prim * wvoxels * 3, grad_warp_ptr + prim * wvoxels * 3,
            yx, yy, yz, inside, warp_up, WD, WH, WW, 3, AT_ONCE,
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
    return tl.where(inside, gyx, 0.0), tl.where(inside, gyy, 0.0), tl.where(inside, gyz, 0.0)


@triton.jit
def _primitive_gradient(grad_prim_ptr, prim, gyx, gyy, gyz, qx, qy, qz, lx, ly, lz,
                        r00, r01, r02, r10, r11, r12, r20, r21, r22, s0, s1, s2):
    """Adds d/d(position, rotation, scale) of one primitive, summed over the tile's rays.

    y = (q @ R) * s with q = x - p: per lane, d/dp = -R h, d/dR[i][j] = q_i h_j and
    d/ds_j = l_j dL/dy_j, with h = s * dL/dy and l = q @ R. The 15 values are packed in one
    [BLOCK, 16] tile so that the tile reduces them in a single pass and 16 lanes issue one relaxed
    atomic each."""
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


@triton.jit
def _march(
    tile,
    raypos_ptr, raydir_ptr, tminmax_ptr,
    pos_ptr, rot_ptr, scale_ptr, template_ptr, warp_ptr,
    end_ptr, count_ptr, prim_ptr, trange_ptr, capacity, bounds_ptr,
    parent_end_ptr, parent_count_ptr, parent_prim_ptr, parent_capacity,
    sat_ptr, grad_out_ptr, grad_prim_ptr, grad_template_ptr, grad_warp_ptr,
    tiles_y, tiles_x, height, width, num_prims,
    dt, fadescale, fadeexp,
    TD: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
    WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr,
    HAS_WARP: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, SUPER: tl.constexpr,
    SCAN_BLOCK: tl.constexpr, AT_ONCE: tl.constexpr, BACKWARD: tl.constexpr,
):
    """Marches one tile's rays through its primitives. Forward (BACKWARD=False): returns each
    ray's colour, alpha, saturating colour and whether it saturated. Backward: re-marches the
    same samples in the same order, rebuilding alpha step by step, and scatters the gradients of
    grad_out_ptr's output gradient (the forward's saturation record is in sat_ptr)."""
    batch, ray, in_image = _tile_rays(tile, tiles_y, tiles_x, height, width, TILE_H, TILE_W)
    ox, oy, oz, dx, dy, dz, tmin, tmax = _load_rays(raypos_ptr, raydir_ptr, tminmax_ptr, ray)
    bp = bounds_ptr + tile * 13
    prim_base = batch.to(tl.int64) * num_prims
    source, start, count = _tile_source(tile, end_ptr, count_ptr, capacity, tiles_y, tiles_x, num_prims,
                                        (tiles_y + SUPER - 1) // SUPER, (tiles_x + SUPER - 1) // SUPER,
                                        parent_end_ptr, parent_count_ptr, parent_capacity, SUPER)
    span_lo, span_hi = _tile_t_span(source, start, count, prim_ptr, trange_ptr, parent_prim_ptr, bp, pos_ptr,
                                    scale_ptr, prim_base)
    zero = tl.zeros_like(tmin)
    saturated = zero > 1.0
    acc_r = zero
    acc_g = zero
    acc_b = zero
    acc_a = zero
    sat_r = zero
    sat_g = zero
    sat_b = zero
    if BACKWARD:
        channel = tl.arange(0, 4)[None, :]
        grad_out = tl.load(grad_out_ptr + ray[:, None] * 4 + channel, mask=in_image[:, None], other=0.0)
        final = tl.load(sat_ptr + ray[:, None] * 4 + channel)
        ends_saturated = _column(final, 3) > 0.5
    # First step of each ray: one step before the first possible hit (rounding slack).
    step = tl.maximum(tl.ceil((span_lo - tmin) / dt) - 1.0, 0.0)
    t, live, window_lo, go = _window(step, tmin, tmax, in_image, saturated, span_hi, dt)
    while go:
        window_hi = tl.max(tl.where(live, t, float("-inf")), 0)
        next_lo = span_lo * 0.0 + float("inf")
        touched = count * 0
        px = ox + dx * t
        py = oy + dy * t
        pz = oz + dz * t
        for first in range(0, count, SCAN_BLOCK):
            entry_prim, e_lo, e_hi = _entry_chunk(first, source, start, count, prim_ptr, trange_ptr, parent_prim_ptr,
                                                  bp, pos_ptr, scale_ptr, prim_base, SCAN_BLOCK)
            next_lo = tl.minimum(next_lo, tl.min(tl.where(e_lo > window_hi, e_lo, float("inf")), 0))
            near = (e_hi >= window_lo) & (e_lo <= window_hi)
            touched += tl.sum(near.to(tl.int32), 0)
            # The near entries of the chunk, one at a time in ascending index (lists ascend, so
            # chunk by chunk this is ascending index over the whole list).
            pending = tl.where(near, entry_prim, NO_PRIM)
            local = tl.min(pending, 0)
            while local < NO_PRIM:
                prim = prim_base + local
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
                        TD, TH, TW, WD, WH, WW, HAS_WARP, AT_ONCE,
                    )
                    if BACKWARD:
                        weight, becomes, upstream, grad_fade = _alpha_gradient(
                            inside, sample, fade, dt, acc_a, grad_out, final, ends_saturated)
                        gyx, gyy, gyz = _local_gradient(
                            prim, inside, upstream, grad_fade, fade, pow_x, pow_y, pow_z, yx, yy, yz, cx, cy, cz,
                            template_ptr, grad_template_ptr, warp_ptr, grad_warp_ptr, fadescale, fadeexp,
                            TD, TH, TW, WD, WH, WW, HAS_WARP, AT_ONCE,
                        )
                        _primitive_gradient(grad_prim_ptr, prim, gyx, gyy, gyz, qx, qy, qz, lx, ly, lz,
                                            r00, r01, r02, r10, r11, r12, r20, r21, r22, s0, s1, s2)
                        acc_a += weight
                        saturated = saturated | becomes
                    else:
                        acc_r, acc_g, acc_b, acc_a, sat_r, sat_g, sat_b, saturated = _composite(
                            inside, sample, fade, dt, acc_r, acc_g, acc_b, acc_a, sat_r, sat_g, sat_b, saturated)
                pending = tl.where(pending > local, pending, NO_PRIM)
                local = tl.min(pending, 0)
        step = _advance(step, touched, next_lo, tmin, dt)
        t, live, window_lo, go = _window(step, tmin, tmax, in_image, saturated, span_hi, dt)
    return ray, in_image, acc_r, acc_g, acc_b, acc_a, sat_r, sat_g, sat_b, saturated


@triton.jit
def _forward_kernel(
    raypos_ptr, raydir_ptr, tminmax_ptr,
    pos_ptr, rot_ptr, scale_ptr, template_ptr, warp_ptr,
    end_ptr, count_ptr, prim_ptr, trange_ptr, capacity, bounds_ptr,
    parent_end_ptr, parent_count_ptr, parent_prim_ptr, parent_capacity,
    out_ptr,  # [N*H*W, 4] rgba
    sat_ptr,  # [N*H*W, 4] rgb of the saturating sample and a flag
    tiles_y, tiles_x, height, width, num_prims,
    dt, fadescale, fadeexp,
    TD: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
    WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr,
    HAS_WARP: tl.constexpr, SAVE_SAT: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, SUPER: tl.constexpr, SCAN_BLOCK: tl.constexpr,
    AT_ONCE: tl.constexpr,
):
    ray, in_image, acc_r, acc_g, acc_b, acc_a, sat_r, sat_g, sat_b, saturated = _march(
        tl.program_id(0), raypos_ptr, raydir_ptr, tminmax_ptr, pos_ptr, rot_ptr, scale_ptr, template_ptr, warp_ptr,
        end_ptr, count_ptr, prim_ptr, trange_ptr, capacity, bounds_ptr,
        parent_end_ptr, parent_count_ptr, parent_prim_ptr, parent_capacity,
        sat_ptr, out_ptr, out_ptr, out_ptr, out_ptr,
        tiles_y, tiles_x, height, width, num_prims, dt, fadescale, fadeexp,
        TD, TH, TW, WD, WH, WW, HAS_WARP, TILE_H, TILE_W, SUPER, SCAN_BLOCK, AT_ONCE, False,
    )
    channel = tl.arange(0, 4)[None, :]
    tl.store(out_ptr + ray[:, None] * 4 + channel, _channels(acc_r, acc_g, acc_b, acc_a), mask=in_image[:, None])
    if SAVE_SAT:
        record = _channels(sat_r, sat_g, sat_b, saturated.to(tl.float32))
        tl.store(sat_ptr + ray[:, None] * 4 + channel, record, mask=in_image[:, None])


@triton.jit
def _backward_kernel(
    raypos_ptr, raydir_ptr, tminmax_ptr,
    pos_ptr, rot_ptr, scale_ptr, template_ptr, warp_ptr,
    end_ptr, count_ptr, prim_ptr, trange_ptr, capacity, bounds_ptr,
    parent_end_ptr, parent_count_ptr, parent_prim_ptr, parent_capacity,
    sat_ptr, grad_out_ptr,
    grad_prim_ptr, grad_template_ptr, grad_warp_ptr,
    tiles_y, tiles_x, height, width, num_prims,
    dt, fadescale, fadeexp,
    TD: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
    WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr,
    HAS_WARP: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, SUPER: tl.constexpr, SCAN_BLOCK: tl.constexpr,
    AT_ONCE: tl.constexpr,
):
    _march(
        tl.program_id(0), raypos_ptr, raydir_ptr, tminmax_ptr, pos_ptr, rot_ptr, scale_ptr, template_ptr, warp_ptr,
        end_ptr, count_ptr, prim_ptr, trange_ptr, capacity, bounds_ptr,
        parent_end_ptr, parent_count_ptr, parent_prim_ptr, parent_capacity,
        sat_ptr, grad_out_ptr, grad_prim_ptr, grad_template_ptr, grad_warp_ptr,
        tiles_y, tiles_x, height, width, num_prims, dt, fadescale, fadeexp,
        TD, TH, TW, WD, WH, WW, HAS_WARP, TILE_H, TILE_W, SUPER, SCAN_BLOCK, AT_ONCE, True,
    )


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _volume_dims(volume):
    if volume is None:
        return 1, 1, 1
    return volume.shape[2], volume.shape[3], volume.shape[4]


def corners_at_once() -> bool:
    """The trilinear form the kernels are launched with (TRILINEAR_CORNERS_AT_ONCE)."""
    if TRILINEAR_CORNERS_AT_ONCE is not None:
        return TRILINEAR_CORNERS_AT_ONCE
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def tile_grid(height: int, width: int) -> tuple[int, int]:
    return triton.cdiv(height, TILE_H), triton.cdiv(width, TILE_W)


def _list_arguments(lists: tuple[torch.Tensor, ...]) -> tuple:
    """The march kernels' list arguments from TileLists.tensors()."""
    coarse_end, coarse_count, coarse_prims, end, count, prims, tranges, bounds = lists
    return (end, count, prims, tranges, prims.shape[0], bounds,
            coarse_end, coarse_count, coarse_prims, coarse_prims.shape[0])


def forward(raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp,
            fadescale, fadeexp, save_saturation, capacities=None):
    """Returns rayrgba [N,H,W,4], raysat ([N,H,W,4] if save_saturation else empty) and the tile
    lists (TileLists.tensors()) that the backward pass reuses. capacities: see build_tile_lists."""
    n, h, w, _ = raypos.shape
    lists = build_tile_lists(raypos, raydir, tminmax, primpos, primscale, capacities)
    CAPACITY.observe(lists.totals(), (lists.coarse_prims.shape[0], lists.prims.shape[0]))
    rayrgba = torch.empty(n, h, w, 4, dtype=torch.float32, device=raypos.device)
    raysat = torch.empty(n, h, w, 4, dtype=torch.float32, device=raypos.device) if save_saturation else None
    td, th, tw = _volume_dims(template)
    wd, wh, ww = _volume_dims(warp)
    tiles_y, tiles_x = tile_grid(h, w)
    _forward_kernel[(n * tiles_y * tiles_x,)](
        raypos, raydir, tminmax, primpos, primrot, primscale, template,
        warp if warp is not None else template,
        *_list_arguments(lists.tensors()),
        rayrgba, raysat if raysat is not None else rayrgba,
        tiles_y, tiles_x, h, w, primpos.shape[1],
        float(stepsize), float(fadescale), float(fadeexp),
        TD=td, TH=th, TW=tw, WD=wd, WH=wh, WW=ww,
        HAS_WARP=warp is not None, SAVE_SAT=save_saturation,
        TILE_H=TILE_H, TILE_W=TILE_W, SUPER=SUPER_TILE, SCAN_BLOCK=SCAN_BLOCK, AT_ONCE=corners_at_once(),
        num_warps=max(1, TILE_H * TILE_W // 32),
    )
    if raysat is None:
        raysat = rayrgba.new_zeros(0)
    return (rayrgba, raysat, *lists.tensors())


def backward(grad_rgba, raypos, raydir, stepsize, tminmax, primpos, primrot, primscale, template, warp,
             fadescale, fadeexp, raysat, lists):
    """Gradients (primpos, primrot, primscale, template, warp or None) from the forward's
    saturation record and tile lists (TileLists.tensors())."""
    n, h, w, _ = raypos.shape
    tiles_y, tiles_x = tile_grid(h, w)
    n_prims = primpos.shape[1]
    # Packed per-primitive gradient: position (3), rotation (9, row-major), scale (3), padding.
    grad_prim = torch.zeros(n, n_prims, 16, dtype=torch.float32, device=primpos.device)
    grad_template = torch.zeros_like(template)
    grad_warp = torch.zeros_like(warp) if warp is not None else None
    td, th, tw = _volume_dims(template)
    wd, wh, ww = _volume_dims(warp)
    _backward_kernel[(n * tiles_y * tiles_x,)](
        raypos, raydir, tminmax, primpos, primrot, primscale, template,
        warp if warp is not None else template,
        *_list_arguments(lists),
        raysat, grad_rgba.contiguous(),
        grad_prim, grad_template,
        grad_warp if grad_warp is not None else grad_template,
        tiles_y, tiles_x, h, w, n_prims,
        float(stepsize), float(fadescale), float(fadeexp),
        TD=td, TH=th, TW=tw, WD=wd, WH=wh, WW=ww,
        HAS_WARP=warp is not None,
        TILE_H=TILE_H, TILE_W=TILE_W, SUPER=SUPER_TILE, SCAN_BLOCK=SCAN_BLOCK, AT_ONCE=corners_at_once(),
        num_warps=max(1, TILE_H * TILE_W // 32),
    )
    grad_pos = grad_prim[..., 0:3]
    grad_rot = grad_prim[..., 3:12].reshape(n, n_prims, 3, 3)
    grad_scale = grad_prim[..., 12:15]
    return grad_pos, grad_rot, grad_scale, grad_template, grad_warp
