"""Ground-truth images: the textured head as volumetric primitives, raymarched with ava.kernels.

Primitives are placed on the head mesh exactly as the decoder places them on its guide mesh
(`ava.nn.placement`, docs/model.md): centres and TBN frames from the geometry image, lateral scale
0.8 * 2 / spacing. Along the normal the boxes are made thin (`shell_mm` half-thickness), which a
decoder can express through its scale residual; it keeps the number of samples small on a CPU.
Each template takes its RGB from the texture under the primitive's footprint and its alpha from a
profile that is dense on the inner side of the surface and fades out just outside it.

Rendering on a CPU is made affordable by restrictions that change no pixel:
- every ray marches only inside the envelope of the primitives (the head mesh inflated past their
  outer reach, found with a small z-buffer rasteriser), on the same sample grid as the full ray
  (a camera close enough to the skin to be inside that envelope, as a headset camera is, starts
  its rays at the camera);
- a first pass stops rays a few millimetres under the surface; rays whose alpha saturated there
  are final (later samples get zero weight), the rest march again through the whole envelope;
- rays are grouped in screen tiles, and each tile is given only the primitives whose bounding
  spheres can meet its rays' segments (in screen position and camera depth).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from ava.data.dataset import pixel_coordinates
from ava.kernels import compute_raydirs, mvp_raymarch
from ava.nn.placement import place_primitives, primitive_spacing
from ava.nn.uvmap import UVMaps, geometry_image

VOLRADIUS = 256.0  # mm per volume unit, as in Ava-256


@dataclass
class Primitives:
    """One primitive set in the head frame, volume units (no batch axis)."""

    primpos: torch.Tensor  # [K,3]
    primrot: torch.Tensor  # [K,3,3]
    primscale: torch.Tensor  # [K,3]
    template: torch.Tensor  # [K,D,D,D,4]

    @property
    def reach(self) -> torch.Tensor:
        """[K] radius of each primitive's bounding sphere (half-diagonal of its box)."""
        return (1.0 / self.primscale).norm(dim=-1)


@dataclass
class RenderSettings:
    prims_per_side: int = 32
    voxels: int = 8
    shell_mm: float = 2.0  # half-thickness of a primitive along the surface normal
    density: float = 400.0  # alpha per volume unit inside the surface
    stepsize: float = 1.0 / 256.0
    march_mm: float = 8.0  # first pass: how far rays march past the mesh surface
    tile: int = 16  # rays are raymarched in square screen tiles of this size
    tiles_per_call: int = 8  # tiles raymarched together (each padded to the group's widest primitive list)


def _neighbour_distances(centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """centres [P,P,3] -> distance to the next centre along the row and along the column, [P,P] each."""
    along_row = (centres[:, 1:] - centres[:, :-1]).norm(dim=-1)
    along_column = (centres[1:] - centres[:-1]).norm(dim=-1)
    return torch.cat([along_row, along_row[:, -1:]], 1), torch.cat([along_column, along_column[-1:]], 0)


def build_primitives(verts_mm: torch.Tensor, texture: np.ndarray, uvmaps: UVMaps,
                     settings: RenderSettings, faces: torch.Tensor | None = None) -> Primitives:
    """verts_mm [V,3] head frame, texture uint8 [S,S,3] (S = the UV map size) -> Primitives.

    The decoder's frame has N = T x dv, which points out of the head only where the UV layout is
    mirrored onto the surface the way head.py's is. Given `faces` [F,3] (wound outwards), each
    primitive whose N points into the head gets its alpha profile turned round, so that the
    surface is opaque from the inside out on every topology."""
    size = uvmaps.size
    count = settings.prims_per_side
    stride = size // count
    postex = geometry_image(verts_mm[None].float() / VOLRADIUS, uvmaps)  # [1,3,S,S]
    primpos, primrot = place_primitives(postex, count)
    # A frame degenerates where a one-texel step along u does not move on the surface; such a
    # primitive would fill all space, so the topology must never produce one.
    if (torch.linalg.det(primrot[0]).abs() < 0.5).any():
        raise ValueError("degenerate primitive frame: the head topology has a zero-length step along u")
    spacing = primitive_spacing(postex, count)[0].clamp(min=1e-6)  # [K]
    lateral = 0.8 * 2.0 / spacing  # the decoder's scale, docs/model.md
    normal = torch.full_like(lateral, VOLRADIUS / settings.shell_mm)
    primscale = torch.stack([lateral, lateral, torch.maximum(normal, lateral)], dim=-1)

    # Texture footprint of each box, in texels: half-extent / (distance per texel) along u and v.
    centres = primpos[0].reshape(count, count, 3)
    along_row, along_column = _neighbour_distances(centres)
    half_extent = (1.0 / lateral).reshape(count, count)
    footprint_u = (half_extent * stride / along_row.clamp(min=1e-6)).clamp(max=2.0 * stride)
    footprint_v = (half_extent * stride / along_column.clamp(min=1e-6)).clamp(max=2.0 * stride)

    voxels = settings.voxels
    local = torch.linspace(-1.0, 1.0, voxels)
    centre_texel = torch.arange(count, dtype=torch.float32) * stride + stride // 2 + 0.5
    # Texel-space sampling positions [P,P,vox_h,vox_w]: local x follows columns, local y rows.
    columns = centre_texel[None, :, None, None] + footprint_u[:, :, None, None] * local[None, None, None, :]
    rows = centre_texel[:, None, None, None] + footprint_v[:, :, None, None] * local[None, None, :, None]
    columns, rows = torch.broadcast_tensors(columns, rows)
    grid = torch.stack([2.0 * columns / size - 1.0, 2.0 * rows / size - 1.0], dim=-1)
    image = rearrange(torch.from_numpy(np.ascontiguousarray(texture)), "h w c -> 1 c h w").float()
    rgb = F.grid_sample(image, grid.reshape(1, count * count * voxels, voxels, 2), mode="bilinear",
                        padding_mode="border", align_corners=False)  # [1,3,K*vox,vox]
    rgb = rearrange(rgb, "1 c (k h) w -> k h w c", k=count * count)

    # Alpha along the normal (local z, template depth axis): dense inside, gone half a shell outside.
    outside = local.clamp(min=0.0)
    alpha_profile = settings.density * torch.exp(-((outside / 0.3) ** 2)) * (local < 0.6)
    template = torch.empty(count * count, voxels, voxels, voxels, 4)
    template[..., :3] = rgb[:, None]
    template[..., 3] = alpha_profile[None, :, None, None]
    if faces is not None:
        outward = geometry_image(vertex_normals(verts_mm.float(), faces)[None], uvmaps)  # [1,3,S,S]
        offset = stride // 2
        outward = rearrange(outward[0, :, offset::stride, offset::stride], "xyz r col -> (r col) xyz")
        inward = (primrot[0, :, :, 2] * outward).sum(dim=-1) < 0
        template[inward, ..., 3] = alpha_profile.flip(0)[None, :, None, None]
    return Primitives(primpos[0], primrot[0], primscale, template)


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals [V,3] (faces wound so that normals point outwards)."""
    corners = verts[faces]  # [F,3,3]
    face_normals = torch.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1)
    normals = torch.zeros_like(verts).index_add_(0, faces.reshape(-1), face_normals.repeat_interleave(3, 0))
    return normals / normals.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def offset_surface(verts: torch.Tensor, faces: torch.Tensor, distance: float) -> torch.Tensor:
    """[V,3] the vertices moved out along their normals far enough that every face's plane moves
    by at least `distance`: by distance / cos of the largest angle between the vertex normal and
    the normals of its faces (at most 4x), so that sharp edges, such as the rim of a closed-off
    neck, are covered as well as smooth parts."""
    normals = vertex_normals(verts, faces)
    corners = verts[faces]
    face_normals = torch.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1)
    face_normals = face_normals / face_normals.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    cosine = (normals[faces] * face_normals[:, None]).sum(dim=-1)  # [F,3]
    smallest = torch.ones(len(verts), dtype=verts.dtype).scatter_reduce(0, faces.reshape(-1), cosine.reshape(-1),
                                                                       reduce="amin")
    return verts + normals * (distance / smallest.clamp(min=0.25))[:, None]


def rasterise_depth(points_camera: torch.Tensor, faces: torch.Tensor, focal: torch.Tensor,
                    princpt: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest and farthest camera-space depth z [H,W] of a mesh at the integer pixel positions (inf/-inf: no hit).

    points_camera [V,3] (any unit, z > 0 in front), focal/princpt [2]. Pixel (x, y) is the ray
    through the pixel coordinate (x, y), the convention of compute_raydirs.
    """
    z = points_camera[:, 2]
    screen = points_camera[:, :2] / z.clamp(min=1e-6)[:, None] * focal + princpt  # [V,2]
    tri = screen[faces]  # [F,3,2]
    tri_inv_z = (1.0 / z.clamp(min=1e-6))[faces]  # [F,3]; 1/z is linear in screen space
    visible = (z[faces] > 1e-6).all(dim=1)
    low = torch.ceil(tri.amin(dim=1)).clamp(min=0)
    high = torch.floor(tri.amax(dim=1))
    high[:, 0] = high[:, 0].clamp(max=width - 1)
    high[:, 1] = high[:, 1].clamp(max=height - 1)
    extent = (high - low + 1).clamp(min=0).long()
    counts = torch.where(visible, extent[:, 0] * extent[:, 1], 0)
    nearest = torch.full((height * width,), float("inf"))
    farthest = torch.full((height * width,), -float("inf"))
    total = int(counts.sum())
    if total:
        face = torch.repeat_interleave(torch.arange(len(faces)), counts)
        within = torch.arange(total) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        span = extent[face, 0].clamp(min=1)
        px = low[face, 0] + (within % span).float()
        py = low[face, 1] + (within // span).float()
        a, b, c = tri[face, 0], tri[face, 1], tri[face, 2]
        area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        safe_area = torch.where(area == 0, 1.0, area)
        w_a = ((b[:, 0] - px) * (c[:, 1] - py) - (b[:, 1] - py) * (c[:, 0] - px)) / safe_area
        w_b = ((c[:, 0] - px) * (a[:, 1] - py) - (c[:, 1] - py) * (a[:, 0] - px)) / safe_area
        w_c = 1.0 - w_a - w_b
        inside = (area != 0) & (w_a >= 0) & (w_b >= 0) & (w_c >= 0)
        inv_z = w_a * tri_inv_z[face, 0] + w_b * tri_inv_z[face, 1] + w_c * tri_inv_z[face, 2]
        pixel = (py * width + px).long()
        depth = 1.0 / inv_z
        pixel, depth = pixel[inside], depth[inside]
        nearest.scatter_reduce_(0, pixel, depth, reduce="amin")
        farthest.scatter_reduce_(0, pixel, depth, reduce="amax")
    return nearest.reshape(height, width), farthest.reshape(height, width)


@dataclass
class View:
    """One camera seen from the head frame (docs/data-layout.md conventions), at the rendered resolution."""

    camrot: torch.Tensor  # [3,3]
    campos: torch.Tensor  # [3] mm
    focal: torch.Tensor  # [2]
    princpt: torch.Tensor  # [2]


def render_views(primitives: Primitives, views: list[View], height: int, width: int,
                 verts_mm: torch.Tensor, faces: torch.Tensor, settings: RenderSettings) -> torch.Tensor:
    """rayrgba [C,H,W,4] (premultiplied rgb 0..255, alpha) of the primitives seen by each view.

    `verts_mm` [V,3] and `faces` [F,3] (wound outwards) must form a closed mesh under the
    primitives (HeadSurface.closed_mesh): its offset surface is the envelope rays march in.

    Equal to raymarching every full ray against every primitive (tests check this), computed in
    two passes: first each ray marches from where it enters the primitives' envelope to
    `march_mm` past the mesh surface; rays that saturated (alpha exactly 1) are final, because
    later samples get zero weight. The others march again through the whole envelope.
    """
    # How far outside the mesh a primitive can hold alpha: its shell plus the lift of a flat box's
    # corners over a curved surface, which its half-diagonal bounds.
    outer_reach_mm = float(settings.shell_mm + primitives.reach.max() * VOLRADIUS)
    inflated = offset_surface(verts_mm, faces, outer_reach_mm)
    count = len(views)
    campos = torch.stack([view.campos for view in views]).float()
    camrot = torch.stack([view.camrot for view in views]).float()
    focal = torch.stack([view.focal for view in views]).float()
    princpt = torch.stack([view.princpt for view in views]).float()
    pixelcoords = pixel_coordinates(height, width)[None].expand(count, -1, -1, -1).contiguous()
    raypos, raydir, cube_t = compute_raydirs(campos, camrot, focal, princpt, pixelcoords, VOLRADIUS)
    # Camera depth -> distance along each unit ray, in volume units.
    per_depth = 1.0 / (torch.einsum("chwj,cij->chwi", raydir, camrot)[..., 2].clamp(min=1e-6) * VOLRADIUS)
    entry, near_exit, far_exit = (torch.empty(count, height, width) for _ in range(3))
    # A camera within the envelope's reach of the mesh (a headset camera a few cm from the skin)
    # may sit inside the envelope, whose near side is then behind it: its rays start at the camera.
    corners = verts_mm[faces]
    longest_edge = float((corners - corners.roll(1, dims=1)).norm(dim=-1).max())
    widest_offset = float((inflated - verts_mm).norm(dim=-1).max())
    for index in range(count):
        camera_points = (inflated - campos[index]) @ camrot[index].T
        envelope_near, envelope_far = rasterise_depth(camera_points, faces, focal[index], princpt[index], height, width)
        if float((verts_mm - campos[index]).norm(dim=-1).min()) < widest_offset + longest_edge:
            envelope_near = torch.where(torch.isfinite(envelope_far), 0.0, float("inf"))
        surface, _ = rasterise_depth((verts_mm - campos[index]) @ camrot[index].T, faces, focal[index],
                                     princpt[index], height, width)
        entry[index] = envelope_near * per_depth[index]
        far_exit[index] = envelope_far * per_depth[index]
        near_exit[index] = torch.minimum(surface * per_depth[index] + settings.march_mm / VOLRADIUS, far_exit[index])
    hit = torch.isfinite(entry)
    # Samples stay on the unclipped ray's grid tmin + i*dt: clipping drops samples, never moves them.
    cube_tmin, cube_tmax = cube_t[..., 0], cube_t[..., 1]
    steps = torch.floor((torch.where(hit, entry, cube_tmin) - cube_tmin).clamp(min=0) / settings.stepsize)
    entry = cube_tmin + steps * settings.stepsize
    far_exit = torch.minimum(far_exit, cube_tmax)
    near_exit = torch.minimum(near_exit, cube_tmax)
    centres = [(primitives.primpos * VOLRADIUS - campos[i]) @ camrot[i].T for i in range(count)]
    tiles = _Tiles(count, height, width, settings.tile)

    def march(active: torch.Tensor, exit: torch.Tensor) -> torch.Tensor:
        tmin = torch.where(active, entry, 1.0)
        tmax = torch.where(active, exit, 0.0)
        active = tmin < tmax
        candidates = torch.cat([
            _cull(primitives, centres[i], focal[i], princpt[i],
                  tiles.reduce(torch.where(active[i], tmin[i] / per_depth[i], float("inf")), "min"),
                  tiles.reduce(torch.where(active[i], tmax[i] / per_depth[i], -float("inf")), "max"), settings.tile)
            for i in range(count)
        ]) & tiles.split(active[..., None], False)[..., 0].any(dim=(1, 2))[:, None]  # [C*tiles, K]
        tminmax = torch.stack([tmin, tmax], dim=-1)
        rayrgba = torch.zeros(count * tiles.per_view, settings.tile, settings.tile, 4)
        used = candidates.any(dim=1).nonzero().squeeze(1)
        if used.numel():
            tile_pos, tile_dir, tile_t = tiles.split(raypos, 0.0), tiles.split(raydir, 1.0), tiles.split(tminmax, 0.0)
            # Tiles with similar candidate counts go together, so little padding is raymarched.
            order = used[torch.argsort(candidates[used].sum(dim=1), descending=True)]
            for start in range(0, len(order), settings.tiles_per_call):
                chosen = order[start : start + settings.tiles_per_call]
                rayrgba[chosen] = _render_group(primitives, candidates[chosen], tile_pos[chosen], tile_dir[chosen],
                                                tile_t[chosen], settings)
        return tiles.merge(rayrgba)

    rayrgba = march(hit, near_exit)
    unfinished = hit & (rayrgba[..., 3] < 1.0) & (near_exit < far_exit)
    if unfinished.any():
        rayrgba = torch.where(unfinished[..., None], march(unfinished, far_exit), rayrgba)
    return rayrgba


class _Tiles:
    """Cuts [C,H,W,...] images into [C*tiles, tile, tile, ...] blocks (padded) and back."""

    def __init__(self, count: int, height: int, width: int, tile: int) -> None:
        self.count, self.height, self.width, self.tile = count, height, width, tile
        self.rows, self.columns = -(-height // tile), -(-width // tile)
        self.per_view = self.rows * self.columns

    def reduce(self, image: torch.Tensor, how: str) -> torch.Tensor:
        """[H,W] -> [rows, columns]: the min or max over each tile (padding ignored)."""
        sign = -1.0 if how == "min" else 1.0
        padded = F.pad(sign * image[None], (0, self.columns * self.tile - self.width, 0, self.rows * self.tile - self.height),
                       value=-float("inf"))
        return sign * F.max_pool2d(padded, self.tile)[0]

    def split(self, images: torch.Tensor, fill: float) -> torch.Tensor:
        padded = F.pad(rearrange(images, "n h w c -> n c h w"),
                       (0, self.columns * self.tile - self.width, 0, self.rows * self.tile - self.height), value=fill)
        return rearrange(padded, "n c (row y) (col x) -> (n row col) y x c", y=self.tile, x=self.tile)

    def merge(self, blocks: torch.Tensor) -> torch.Tensor:
        image = rearrange(blocks, "(n row col) y x c -> n (row y) (col x) c", row=self.rows, col=self.columns)
        return image[:, : self.height, : self.width]


def _cull(primitives: Primitives, centres_camera: torch.Tensor, focal: torch.Tensor, princpt: torch.Tensor,
          tile_near: torch.Tensor, tile_far: torch.Tensor, tile: int) -> torch.Tensor:
    """[rows*columns, K]: primitives whose bounding sphere can meet a ray segment of the tile.

    Conservative: the sphere (centre c, radius r) projects inside a circle of radius f r / (z - r)
    around the projected centre, and must overlap the tile's camera-depth range.
    """
    reach_mm = primitives.reach * VOLRADIUS
    depth = centres_camera[:, 2]
    in_front = depth - reach_mm > 1.0
    screen = centres_camera[:, :2] / depth.clamp(min=1.0)[:, None] * focal + princpt
    radius = focal.max() * reach_mm / (depth - reach_mm).clamp(min=1.0)
    rows, columns = tile_near.shape
    # Tile pixel positions span [first, first + tile - 1] in x and y.
    x0 = torch.arange(columns, dtype=torch.float32) * tile
    y0 = torch.arange(rows, dtype=torch.float32) * tile
    overlap_x = (screen[None, :, 0] + radius >= x0[:, None]) & (screen[None, :, 0] - radius <= x0[:, None] + tile - 1)
    overlap_y = (screen[None, :, 1] + radius >= y0[:, None]) & (screen[None, :, 1] - radius <= y0[:, None] + tile - 1)
    overlap_z = (depth + reach_mm >= tile_near.reshape(-1, 1)) & (depth - reach_mm <= tile_far.reshape(-1, 1))
    screen_overlap = (overlap_y[:, None, :] & overlap_x[None, :, :]).reshape(rows * columns, -1)
    return screen_overlap & overlap_z & in_front[None]


def _render_group(primitives: Primitives, candidates: torch.Tensor, raypos, raydir, tminmax,
                  settings: RenderSettings) -> torch.Tensor:
    """Renders tiles [G,tile,tile], each with its own candidate primitives (candidates [G,K] bool)."""
    count = candidates.shape[1]
    width = max(int(candidates.sum(dim=1).max()), 1)
    # Candidate ids in ascending order (the raymarcher composites a step in index order); the
    # padding points at an extra primitive far outside the volume with an empty template.
    ranks = torch.where(candidates, torch.arange(count)[None], count)
    index = ranks.sort(dim=1).values[:, :width]
    primpos = torch.cat([primitives.primpos, torch.full((1, 3), 100.0)])[index]
    primrot = torch.cat([primitives.primrot, torch.eye(3)[None]])[index]
    primscale = torch.cat([primitives.primscale, torch.ones(1, 3)])[index]
    template = torch.cat([primitives.template, torch.zeros_like(primitives.template[:1])])[index]
    return mvp_raymarch(raypos.contiguous(), raydir.contiguous(), settings.stepsize, tminmax.contiguous(),
                        primpos, primrot, primscale, template, backend="torch")
