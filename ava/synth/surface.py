"""The head a synthetic set is built on: the procedural head (head.py) or the template of a face
topology (template.py), behind one interface for the pipeline.

`--topology procedural` (the default) is ava's own small head; `original` is the Ava-256
`face_topology.obj` (7306 vertices; fetched and checked by `ava.nn.topology`, which honours
`$AVA_TOPOLOGY_URL`, a URL or a local file); any other value is the path of an OBJ with that
topology's UV layout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ava.errors import UserError
from ava.synth.head import Expression, HeadGrid, Identity, expression_offsets, make_head_grid, neutral_shape, to_topology
from ava.synth.template import TemplateHead, fit_template, template_vertices
from ava.synth.template import texel_angles as template_texel_angles

PROCEDURAL = "procedural"
ORIGINAL = "original"


def topology_source(choice: str) -> Path | None:
    """The OBJ behind a `--topology` value: None for the procedural head, the checked original
    (downloaded once into the cache) for `original`, else the given path."""
    if choice == PROCEDURAL:
        return None
    if choice == ORIGINAL:
        from ava.nn.topology import original_topology_path

        return original_topology_path()
    path = Path(choice).expanduser()
    if not path.is_file():
        raise UserError(f"--topology {choice}: no such OBJ file (or use 'procedural' or 'original')")
    return path


def topology_digest(choice: str) -> str | None:
    """SHA-256 of the OBJ behind `choice` (None for the procedural head or a missing file), without
    fetching the original."""
    if choice == PROCEDURAL:
        return None
    if choice == ORIGINAL:
        from ava.nn.topology import ORIGINAL_TOPOLOGY_SHA256

        return ORIGINAL_TOPOLOGY_SHA256
    path = Path(choice).expanduser()
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@dataclass
class HeadSurface:
    """A head mesh with a place on head.py's angle map for every vertex."""

    topology: object  # ava.nn.uvmap.Topology: UVs and faces (its positions are not used)
    theta: np.ndarray  # [V] polar angle of every vertex on head.py's parameterisation
    phi: np.ndarray  # [V] azimuth
    faces: np.ndarray  # i64 [F,3] the topology's triangles, wound so that normals point out of the head
    holes: list[np.ndarray]  # vertex ids around each hole of the mesh (the neck), in boundary-edge order
    grid: HeadGrid | None = None  # the procedural head's grid
    template: TemplateHead | None = None  # a topology's template in the head frame
    obj_path: Path | None = None  # the OBJ the template came from

    @property
    def num_verts(self) -> int:
        return len(self.theta)

    @property
    def used(self) -> np.ndarray:
        """bool [V]: vertices that some triangle uses (the Ava-256 OBJ also lists eye and mouth
        interior vertices outside every triangle)."""
        mask = np.zeros(self.num_verts, dtype=bool)
        mask[self.faces.reshape(-1)] = True
        return mask

    def vertices(self, identity: Identity, expression: Expression) -> np.ndarray:
        """f32 [V,3] head-frame mesh (mm) of `identity` making `expression`."""
        if self.template is not None:
            return template_vertices(self.template, identity, expression)
        shape = neutral_shape(identity, self.theta, self.phi) + expression_offsets(self.theta, self.phi, expression)
        return shape.astype(np.float32)

    def texel_angles(self, uvmaps) -> tuple[np.ndarray, np.ndarray]:
        """(theta, phi) [S,S] of every texel of `uvmaps` (an `ava.nn.uvmap.UVMaps` of this topology)."""
        if self.template is None:
            from ava.synth.appearance import texel_angles

            return texel_angles(uvmaps.size)  # exact: the procedural UVs are a function of the angles
        return template_texel_angles(self.template, uvmaps.vertex_index.numpy(), uvmaps.bary.numpy())

    def closed_mesh(self, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([V+H,3] vertices, [F',3] faces): the mesh with each of its H holes closed by a fan around
        the hole's centroid (wound outwards like the rest). The renderer needs a closed envelope:
        primitives on the rim of an open neck reach past the rim."""
        if not self.holes:
            return vertices, self.faces
        centres = np.stack([vertices[hole].mean(axis=0) for hole in self.holes]).astype(vertices.dtype)
        fans = []
        for index, hole in enumerate(self.holes):
            centre = np.full(len(hole), self.num_verts + index)
            fans.append(np.stack([np.roll(hole, -1), hole, centre], axis=1))  # each rim edge reversed
        return np.concatenate([vertices, centres]), np.concatenate([self.faces, *fans])

    def obj_bytes(self, mean_shape: np.ndarray) -> bytes:
        """The dataset's face_topology.obj: the topology's own file, or the procedural grid with
        `mean_shape` [V,3] as its positions."""
        if self.obj_path is not None:
            return self.obj_path.read_bytes()
        from ava.nn.uvmap import format_obj

        return format_obj(to_topology(self.grid, mean_shape)).encode()


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Vertex ids around each hole: the edges that only one triangle has, chained in the direction
    the triangles run along them."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    present = set(map(tuple, edges.tolist()))
    following = {a: b for a, b in edges.tolist() if (b, a) not in present}
    loops, seen = [], set()
    for start in sorted(following):
        if start in seen:
            continue
        loop, vertex = [], start
        while vertex not in seen and vertex in following:
            seen.add(vertex)
            loop.append(vertex)
            vertex = following[vertex]
        if len(loop) >= 3 and vertex == start:
            loops.append(np.array(loop, dtype=np.int64))
    return loops


def _outward_faces(positions: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """`faces`, reversed if they wind inwards (negative signed volume about the head's centre)."""
    corners = positions[faces]
    volume = np.einsum("fi,fi->f", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6.0
    return faces if volume >= 0 else np.ascontiguousarray(faces[:, ::-1])


def head_surface(choice: str, mesh_columns: int = 64, mesh_rows: int = 48) -> HeadSurface:
    """The head of `--topology choice` (see the module docstring)."""
    path = topology_source(choice)
    if path is None:
        grid = make_head_grid(mesh_columns, mesh_rows)
        return HeadSurface(to_topology(grid, np.zeros((grid.num_verts, 3))), grid.theta, grid.phi, grid.faces,
                           boundary_loops(grid.faces), grid=grid)
    from ava.nn.uvmap import load_obj

    topology = load_obj(path)
    template = fit_template(topology, source=str(path))
    faces = _outward_faces(template.positions, topology.faces.numpy())
    return HeadSurface(topology, template.theta, template.phi, faces, boundary_loops(faces), template=template,
                       obj_path=path)
