"""Mesh topology (OBJ) and the per-texel UV index/barycentric maps of docs/model.md.

Conventions kept from the original (they decide which texel sees which surface point, so a
checkpoint trained there only works here if they match):

* texel centres: column c is at u = (c + 0.5)/S;
* vertical flip: row r is at v = 1 - (r + 0.5)/S, so row 0 is the top of the UV square (v ~ 1);
* each texel stores the three *geometry* vertex ids of the UV triangle that contains its centre
  (or, for a texel outside every triangle, of the triangle whose boundary edge is nearest) and the
  barycentric coordinates of that point in it.

The original found the closest point with a generic point-to-mesh query; here each UV triangle is
rasterised over the texel centres inside its bounding box (vectorised, in float64), which gives
the same answer for every texel inside the mesh. Texels on an edge shared by two triangles take the
triangle in which the point lies deepest (largest smallest barycentric), then the lower face id;
the original broke such ties arbitrarily, and both choices give the same surface point.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from ava.errors import UserError
from ava.files import cache_dir, write_atomically

# Bumped whenever the rasteriser's output could change, so that stale cache files are not reused.
_UVMAP_CACHE_VERSION = 1
# Candidate (texel, triangle) pairs examined at once; bounds memory for large maps.
_RASTER_CHUNK = 1 << 22
# Texel/edge distance evaluations at once in the outside-texel fallback.
_EDGE_CHUNK = 1 << 23


@dataclass
class Topology:
    """A triangle mesh with texture coordinates, as read from an OBJ file."""

    verts: torch.Tensor
    """f32 [V,3] vertex positions (the template mesh; only the topology matters to the model)."""
    uvs: torch.Tensor
    """f32 [T,2] texture coordinates (u right, v up, in [0,1])."""
    faces: torch.Tensor
    """i64 [F,3] geometry vertex ids of each triangle's corners."""
    face_uvs: torch.Tensor
    """i64 [F,3] texture coordinate ids of each triangle's corners."""

    @property
    def num_verts(self) -> int:
        return int(self.verts.shape[0])

    def content_hash(self) -> str:
        """SHA-256 over the arrays that define the topology (not over the file's formatting)."""
        digest = hashlib.sha256()
        for array in (self.verts, self.uvs, self.faces, self.face_uvs):
            contiguous = array.detach().cpu().contiguous()
            digest.update(str(tuple(contiguous.shape)).encode())
            digest.update(str(contiguous.dtype).encode())
            digest.update(contiguous.numpy().tobytes())
        return digest.hexdigest()


def _obj_number(token: str, where: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise UserError(f"{where}: {token!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{where}: {token!r} is not a finite number")
    return value


def _obj_numbers(fields: list[str], least: int, most: int, what: str, where: str) -> list[float]:
    if not least <= len(fields) <= most:
        wanted = f"{least}" if least == most else f"{least} to {most}"
        raise UserError(f"{where}: {what} needs {wanted} numbers, got {len(fields)}")
    return [_obj_number(token, where) for token in fields]


def _obj_index(token: str, defined: int, what: str, where: str) -> int:
    """0-based index of a face corner's `token`: 1-based, or negative counting back from the last
    element defined so far (-1 is the last one). Out-of-range relative indices fail here, with the
    index as written; positive ones may name elements defined later and are checked at the end."""
    try:
        index = int(token)
    except ValueError:
        raise UserError(f"{where}: {what} index {token!r} is not an integer") from None
    if index == 0:
        raise UserError(f"{where}: {what} index 0 is not valid (OBJ indices start at 1)")
    if index > 0:
        return index - 1
    if -index > defined:
        raise UserError(f"{where}: {what} index {index} points before the first {what} "
                        f"(only {defined} defined above this line)")
    return defined + index


def parse_obj(text: str, source: str = "<obj>") -> Topology:
    """Parse OBJ text into a Topology: `v`, `vt` and `f` lines; other statements are ignored.

    Accepted: `v x y z [w]` (and `v x y z r g b` vertex colours, ignored), `vt u [v [w]]` (v
    defaults to 0), faces of 3 or more corners written `v/vt` or `v/vt/vn` (polygons become
    triangle fans), 1-based and negative (relative) indices. Every malformed line is a UserError
    naming `source` and the line number; faces without texture coordinates (`v` or `v//vn`) are
    legal OBJ but refused, since the model needs UVs.
    """
    verts: list[list[float]] = []
    uvs: list[list[float]] = []
    normal_count = 0
    faces: list[list[int]] = []
    face_uvs: list[list[int]] = []
    face_lines: list[int] = []  # the line of each triangle, for the range check at the end
    normals: list[tuple[int, int]] = []  # (line, normal index) of the corners that name one
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        keyword, values = fields[0], fields[1:]
        where = f"{source}:{line_number}"
        if keyword == "v":
            if len(values) not in (3, 4, 6, 7):
                raise UserError(f"{where}: a vertex needs 3 coordinates (x y z [w], or x y z r g b), got {len(values)}")
            verts.append([_obj_number(token, where) for token in values][:3])
        elif keyword == "vt":
            u, v = (_obj_numbers(values, 1, 3, "a texture coordinate", where) + [0.0])[:2]
            uvs.append([u, v])
        elif keyword == "vn":
            _obj_numbers(values, 3, 3, "a normal", where)
            normal_count += 1
        elif keyword == "f":
            if len(values) < 3:
                raise UserError(f"{where}: a face needs at least 3 corners, got {len(values)}")
            corner_verts, corner_uvs = [], []
            for corner in values:
                parts = corner.split("/")
                if len(parts) > 3 or not parts[0]:
                    raise UserError(f"{where}: face corner {corner!r} is not v, v/vt, v/vt/vn or v//vn")
                corner_verts.append(_obj_index(parts[0], len(verts), "vertex", where))
                if len(parts) == 3 and parts[2]:
                    normals.append((line_number, _obj_index(parts[2], normal_count, "normal", where)))
                if len(parts) < 2 or not parts[1]:
                    raise UserError(f"{where}: face corner {corner!r} has no texture coordinate; the model "
                                    "needs a mesh with UVs (f v/vt ... or f v/vt/vn ...)")
                corner_uvs.append(_obj_index(parts[1], len(uvs), "texture coordinate", where))
            for i in range(1, len(corner_verts) - 1):
                faces.append([corner_verts[0], corner_verts[i], corner_verts[i + 1]])
                face_uvs.append([corner_uvs[0], corner_uvs[i], corner_uvs[i + 1]])
                face_lines.append(line_number)
    if not faces:
        raise UserError(f"{source}: no faces found; is this an OBJ mesh?")
    # Positive indices may name elements defined further down, so they are checked once all are read.
    for name, references, count in (
        ("vertex", ((face_lines[row], index) for row, corners in enumerate(faces) for index in corners), len(verts)),
        ("texture coordinate", ((face_lines[row], index) for row, corners in enumerate(face_uvs) for index in corners),
         len(uvs)),
        ("normal", iter(normals), normal_count),
    ):
        bad = next(((line, index) for line, index in references if index >= count), None)
        if bad is not None:
            raise UserError(f"{source}:{bad[0]}: {name} index {bad[1] + 1} is out of range (the file has {count})")
    return Topology(
        verts=torch.tensor(verts, dtype=torch.float32).reshape(-1, 3),
        uvs=torch.tensor(uvs, dtype=torch.float32).reshape(-1, 2),
        faces=torch.tensor(faces, dtype=torch.int64),
        face_uvs=torch.tensor(face_uvs, dtype=torch.int64),
    )


def load_obj(path: str | Path) -> Topology:
    """Read an OBJ mesh with texture coordinates (docs/model.md `load_obj`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot read the topology OBJ {path}: {error}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not a text OBJ file (byte {error.start} is not UTF-8)") from None
    return parse_obj(text, str(path))


def format_obj(topology: Topology) -> str:
    """OBJ text for `topology` (`v`, `vt`, `f v/vt`), readable by `parse_obj` and other tools."""
    lines = [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in topology.verts.tolist()]
    lines += [f"vt {u:.9g} {v:.9g}" for u, v in topology.uvs.tolist()]
    for corners, corner_uvs in zip(topology.faces.tolist(), topology.face_uvs.tolist()):
        lines.append("f " + " ".join(f"{a + 1}/{b + 1}" for a, b in zip(corners, corner_uvs)))
    return "\n".join(lines) + "\n"


def write_obj(topology: Topology, path: str | Path) -> None:
    """Write `topology` as an OBJ file (atomically)."""
    write_atomically(Path(path), format_obj(topology).encode())


@dataclass
class UVMaps:
    """Per-texel surface lookup for one topology at one UV resolution S (docs/model.md)."""

    vertex_index: torch.Tensor
    """i64 [3,S,S] geometry vertex id of each corner of the texel's triangle."""
    bary: torch.Tensor
    """f32 [3,S,S] barycentric weight of each corner (they sum to 1)."""

    @property
    def size(self) -> int:
        return int(self.bary.shape[-1])


def _texel_space(uvs: np.ndarray, size: int) -> np.ndarray:
    """UV [T,2] -> continuous texel coordinates (x, y) in which texel (r, c) has its centre at (c, r)."""
    return np.stack([uvs[:, 0] * size - 0.5, (1.0 - uvs[:, 1]) * size - 0.5], axis=1)


def _rasterise(corners: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangles [F,3,2] in texel space -> (face [S*S] (-1 if none), bary [S*S,3], score [S*S])."""
    num_texels = size * size
    best_face = np.full(num_texels, -1, dtype=np.int64)
    best_bary = np.zeros((num_texels, 3), dtype=np.float64)
    best_score = np.full(num_texels, -np.inf)

    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    low = np.clip(np.ceil(corners.min(axis=1)), 0, size).astype(np.int64)
    high = np.clip(np.floor(corners.max(axis=1)), -1, size - 1).astype(np.int64)
    width = np.maximum(high[:, 0] - low[:, 0] + 1, 0)
    height = np.maximum(high[:, 1] - low[:, 1] + 1, 0)
    counts = np.where(np.abs(area) > 1e-12, width * height, 0)
    faces = np.nonzero(counts)[0]
    ends = np.cumsum(counts[faces])
    start = 0
    while start < len(faces):
        # Take whole triangles until the chunk holds about _RASTER_CHUNK candidates.
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + _RASTER_CHUNK, side="right")), start + 1)
        chunk = faces[start:stop]
        chunk_counts = counts[chunk]
        owner = np.repeat(chunk, chunk_counts)
        offsets = np.repeat(np.cumsum(chunk_counts) - chunk_counts, chunk_counts)
        local = np.arange(owner.shape[0]) - offsets
        column = low[owner, 0] + local % width[owner]
        row = low[owner, 1] + local // width[owner]
        # Barycentrics by Cramer's rule against corner a.
        px = column - a[owner, 0]
        py = row - a[owner, 1]
        e1x, e1y = b[owner, 0] - a[owner, 0], b[owner, 1] - a[owner, 1]
        e2x, e2y = c[owner, 0] - a[owner, 0], c[owner, 1] - a[owner, 1]
        inv_area = 1.0 / area[owner]
        w1 = (px * e2y - py * e2x) * inv_area
        w2 = (e1x * py - e1y * px) * inv_area
        w0 = 1.0 - w1 - w2
        score = np.minimum(np.minimum(w0, w1), w2)
        inside = score >= -1e-9
        texel = (row * size + column)[inside]
        owner, score = owner[inside], score[inside]
        weights = np.stack([w0[inside], w1[inside], w2[inside]], axis=1)
        # Per texel keep the deepest candidate, ties to the lower face id.
        order = np.lexsort((owner, -score, texel))
        texel, owner, score, weights = texel[order], owner[order], score[order], weights[order]
        first = np.ones(texel.shape[0], dtype=bool)
        first[1:] = texel[1:] != texel[:-1]
        texel, owner, score, weights = texel[first], owner[first], score[first], weights[first]
        better = score > best_score[texel]
        texel = texel[better]
        best_face[texel] = owner[better]
        best_bary[texel] = weights[better]
        best_score[texel] = score[better]
        start = stop
    return best_face, best_bary, best_score


def _boundary_edges(face_uvs: np.ndarray) -> np.ndarray:
    """Edges used by exactly one UV triangle, as rows (face, corner_a, corner_b)."""
    corner_pairs = np.array([[0, 1], [1, 2], [2, 0]])
    num_faces = face_uvs.shape[0]
    face = np.repeat(np.arange(num_faces), 3)
    corner_a = np.tile(corner_pairs[:, 0], num_faces)
    corner_b = np.tile(corner_pairs[:, 1], num_faces)
    ends = np.sort(np.stack([face_uvs[face, corner_a], face_uvs[face, corner_b]], axis=1), axis=1)
    _, inverse, counts = np.unique(ends, axis=0, return_inverse=True, return_counts=True)
    single = counts[inverse.reshape(-1)] == 1
    if not single.any():
        single[:] = True
    return np.stack([face[single], corner_a[single], corner_b[single]], axis=1)


def _nearest_edge(points: np.ndarray, corners: np.ndarray, face_uvs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For points [M,2] outside every triangle: (face [M], bary [M,3]) of the nearest edge point."""
    edges = _boundary_edges(face_uvs)
    start_points = torch.from_numpy(corners[edges[:, 0], edges[:, 1]])
    end_points = torch.from_numpy(corners[edges[:, 0], edges[:, 2]])
    direction = end_points - start_points
    length2 = (direction * direction).sum(-1).clamp_min(1e-30)
    query = torch.from_numpy(points)
    nearest = torch.empty(points.shape[0], dtype=torch.int64)
    rows = max(1, _EDGE_CHUNK // max(1, edges.shape[0]))
    # Separate x/y planes in float32: reductions over a trailing axis of 2 are slow.
    start_x, start_y = start_points[:, 0].float(), start_points[:, 1].float()
    step_x, step_y = direction[:, 0].float(), direction[:, 1].float()
    inverse_length2 = 1.0 / length2.float()
    for begin in range(0, points.shape[0], rows):
        chunk = query[begin : begin + rows].float()
        relative_x = chunk[:, 0:1] - start_x
        relative_y = chunk[:, 1:2] - start_y
        t = ((relative_x * step_x + relative_y * step_y) * inverse_length2).clamp_(0.0, 1.0)
        gap_x = relative_x.sub_(t * step_x)
        gap_y = relative_y.sub_(t * step_y)
        nearest[begin : begin + rows] = (gap_x.square_() + gap_y.square_()).argmin(dim=1)
    # Recompute the winner's edge parameter in float64 for accurate barycentrics.
    relative = query - start_points[nearest]
    t = ((relative * direction[nearest]).sum(-1) / length2[nearest]).clamp(0.0, 1.0).numpy()
    chosen = edges[nearest.numpy()]
    bary = np.zeros((points.shape[0], 3))
    rows_index = np.arange(points.shape[0])
    bary[rows_index, chosen[:, 1]] = 1.0 - t
    bary[rows_index, chosen[:, 2]] = t
    return chosen[:, 0], bary


def _compute_uv_maps(topology: Topology, size: int) -> UVMaps:
    uvs = topology.uvs.double().numpy()
    face_uvs = topology.face_uvs.numpy()
    corners = _texel_space(uvs, size)[face_uvs]  # [F,3,2]
    face, bary, _ = _rasterise(corners, size)
    outside = np.nonzero(face < 0)[0]
    if outside.size:
        points = np.stack([outside % size, outside // size], axis=1).astype(np.float64)
        face[outside], bary[outside] = _nearest_edge(points, corners, face_uvs)
    vertex_index = rearrange(topology.faces.numpy()[face], "(h w) corner -> corner h w", w=size)
    return UVMaps(
        vertex_index=torch.from_numpy(np.ascontiguousarray(vertex_index)).long(),
        bary=torch.from_numpy(np.ascontiguousarray(rearrange(bary, "(h w) corner -> corner h w", w=size))).float(),
    )


def _check_size(size: int) -> None:
    if size < 1 or size & (size - 1):
        raise UserError(f"UV map size must be a power of two, got {size}")


def build_uv_maps(topology: Topology, size: int, *, use_cache: bool = True) -> UVMaps:
    """Per-texel vertex ids and barycentrics for an S x S UV map (docs/model.md conventions).

    Results are cached under `$AVA_CACHE_DIR/uvmaps` (default `~/.cache/ava/uvmaps`), keyed by the
    topology's content hash and the size.
    """
    _check_size(size)
    if not use_cache:
        return _compute_uv_maps(topology, size)
    key = f"v{_UVMAP_CACHE_VERSION}-{topology.content_hash()[:32]}-{size}.npz"
    path = cache_dir("uvmaps") / key
    if path.exists():
        try:
            with np.load(path) as stored:
                maps = UVMaps(
                    vertex_index=torch.from_numpy(stored["vertex_index"].astype(np.int64)),
                    bary=torch.from_numpy(stored["bary"].astype(np.float32)),
                )
            if maps.bary.shape == (3, size, size):
                return maps
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is rebuilt below
    maps = _compute_uv_maps(topology, size)
    buffer = io.BytesIO()
    np.savez(buffer, vertex_index=maps.vertex_index.numpy().astype(np.int32), bary=maps.bary.numpy())
    try:
        write_atomically(path, buffer.getvalue())
    except OSError:
        pass  # a read-only cache only costs the rebuild next time
    return maps


def geometry_image(
    verts: torch.Tensor, uvmaps: UVMaps | torch.Tensor, bary: torch.Tensor | None = None
) -> torch.Tensor:
    """Interpolate per-vertex values into UV space (docs/model.md `generate_geomap`).

    verts [N,V,C] and either a `UVMaps` or its two tensors (vertex_index i64 [3,S,S],
    bary [3,S,S]) -> [N,C,S,S]. The corner terms are summed in corner order, as the original does.
    """
    if isinstance(uvmaps, UVMaps):
        vertex_index, bary = uvmaps.vertex_index, uvmaps.bary
    else:
        vertex_index = uvmaps
        if bary is None:
            raise TypeError("geometry_image needs bary when given a vertex_index tensor")
    size_w = vertex_index.shape[-1]
    per_channel = rearrange(verts, "n v c -> n c v")
    image = None
    for corner in range(3):
        gathered = per_channel.index_select(2, vertex_index[corner].reshape(-1))
        term = rearrange(gathered, "n c (h w) -> n c h w", w=size_w) * bary[corner]
        image = term if image is None else image + term
    return image
