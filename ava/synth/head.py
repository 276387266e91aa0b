"""A procedural head: topology with UVs, per-identity shape, per-frame expressions.

The surface is a sphere parameterised by its UV square: u runs around the vertical axis
(azimuth phi decreasing with u, the face looks along +z at u = 0.5, the seam is at the back) and
v runs from the neck (v = 0, polar angle theta = 0) to the crown (v = 1, theta = pi); both maps
are warped so that the face gets a larger share of the texture (and so more primitives). The grid's
cells split into triangles that tile the whole unit square, as the Ava-256 topology does; the
seam column shares geometry vertices between two UVs. The neck is open and the crown keeps a
pin-hole (rings stop just short of the poles), which the primitives cover.

With this orientation the decoder's frame (docs/model.md) has T along +u, B along the texture rows
and N = T x dv pointing out of the head.

Head frame: +x towards the subject's left ear, +y up, +z out of the face; millimetres; the
head's centre at the origin.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch


def directions(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Unit directions [...,3] for polar angle theta (0 at the neck, pi at the crown) and azimuth phi (0 = front)."""
    sin_theta = np.sin(theta)
    return np.stack([sin_theta * np.sin(phi), -np.cos(theta), sin_theta * np.cos(phi)], axis=-1)


# How much of the UV square the face gets: the slopes of the angle maps at the face's centre
# (1 would be a plain sphere map; smaller gives the face more texels, and so more primitives).
_FACE_U_SLOPE = 0.45
_FACE_V_SLOPE = 0.6
# The first and last rings stop this far (radians) short of the poles. A single pole vertex would
# give triangles with two corners on the same point, where the decoder's frame (T from a one-texel
# step along u) degenerates; the crown keeps a pin-hole that the primitives cover.
_POLE_GAP = 0.01


def uv_to_angles(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(theta, phi) of UV coordinates; monotonic maps that magnify the face (u = v = 0.5)."""
    s = 1.0 - 2.0 * np.asarray(u, dtype=np.float64)
    phi = np.pi * (_FACE_U_SLOPE * s + (1.0 - _FACE_U_SLOPE) * s**3)
    v = np.asarray(v, dtype=np.float64)
    warped = v - (1.0 - _FACE_V_SLOPE) * np.sin(2.0 * np.pi * (v - 0.5)) / (2.0 * np.pi)
    theta = _POLE_GAP + (np.pi - 2.0 * _POLE_GAP) * warped
    return theta, phi


@dataclass
class HeadGrid:
    """The procedural topology: `columns` x `rows` UV cells on `rows + 1` rings of `columns` vertices."""

    columns: int
    rows: int
    theta: np.ndarray  # [V] polar angle of each geometry vertex
    phi: np.ndarray  # [V] azimuth
    uvs: np.ndarray  # [T,2]
    faces: np.ndarray  # [F,3] geometry vertex ids
    face_uvs: np.ndarray  # [F,3] uv ids

    @property
    def num_verts(self) -> int:
        return len(self.theta)


def make_head_grid(columns: int = 64, rows: int = 48) -> HeadGrid:
    """Vertices: rings from the neck to the crown. UVs: a (columns+1) x (rows+1) grid; the seam
    column (u = 0 and u = 1) shares its geometry vertices."""
    if columns < 4 or rows < 4:
        raise ValueError("the head grid needs at least 4 columns and 4 rows")
    ring_theta, _ = uv_to_angles(np.zeros(rows + 1), np.arange(rows + 1) / rows)
    _, ring_phi = uv_to_angles(np.arange(columns) / columns, np.zeros(columns))
    theta = np.repeat(ring_theta, columns)
    phi = np.tile(ring_phi, rows + 1)

    def vertex(column: np.ndarray, row: np.ndarray) -> np.ndarray:
        return row * columns + column % columns

    grid_u, grid_v = np.meshgrid(np.arange(columns + 1) / columns, np.arange(rows + 1) / rows)
    uvs = np.stack([grid_u.ravel(), grid_v.ravel()], axis=1)

    def uv_id(column: np.ndarray, row: np.ndarray) -> np.ndarray:
        return row * (columns + 1) + column

    column, row = np.meshgrid(np.arange(columns), np.arange(rows))
    column, row = column.ravel(), row.ravel()
    corners = [(column, row), (column + 1, row), (column + 1, row + 1), (column, row + 1)]
    # The UV square maps mirrored onto the surface (u runs towards -x on the face), so triangles
    # that are clockwise in UV are counter-clockwise seen from outside: outward face normals.
    triangles = [(0, 2, 1), (0, 3, 2)]
    faces = np.concatenate([np.stack([vertex(*corners[i]) for i in tri], 1) for tri in triangles])
    face_uvs = np.concatenate([np.stack([uv_id(*corners[i]) for i in tri], 1) for tri in triangles])
    return HeadGrid(columns, rows, theta, phi, uvs, faces.astype(np.int64), face_uvs.astype(np.int64))


def angular_bump(theta: np.ndarray, phi: np.ndarray, centre_theta: float, centre_phi: float,
                 width_theta: float, width_phi: float) -> np.ndarray:
    """A smooth anisotropic Gaussian on the sphere around (centre_theta, centre_phi); 1 at the centre."""
    dphi = np.angle(np.exp(1j * (phi - centre_phi)))  # wrapped to (-pi, pi]
    return np.exp(-0.5 * (((theta - centre_theta) / width_theta) ** 2 + (dphi / width_phi) ** 2))


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """0 at edge0, 1 at edge1 (either order), cubic in between; a step when the edges meet."""
    span = np.asarray(edge1 - edge0, dtype=np.float64)
    safe = np.where(span == 0, 1.0, span)
    t = np.where(span == 0, (np.asarray(x) >= edge0).astype(np.float64), np.clip((x - edge0) / safe, 0.0, 1.0))
    return t * t * (3.0 - 2.0 * t)


# Feature positions in (theta, phi); theta grows from the neck to the crown.
MOUTH_THETA = 0.36 * np.pi
NOSE_THETA = 0.47 * np.pi
EYE_THETA = 0.55 * np.pi
BROW_THETA = 0.62 * np.pi
EYE_PHI = 0.36


# The ranges Identity.sample draws shapes from (mm, except the relative neck width).
SHAPE_RANGES = {
    "radii": ((72.0, 82.0), (102.0, 116.0), (86.0, 98.0)),  # ellipsoid semi-axes x, y, z
    "nose": (11.0, 16.0),
    "ears": (6.0, 10.0),
    "brow_ridge": (3.0, 6.0),
    "chin": (4.0, 9.0),
    "eye_depth": (4.0, 7.0),
    "neck": (0.5, 0.62),
}
AVERAGE_SHAPE = {name: (np.mean(bounds, axis=-1) if name == "radii" else float(np.mean(bounds)))
                 for name, bounds in SHAPE_RANGES.items()}


@dataclass
class Identity:
    """Shape and colour parameters of one synthetic subject (mm, RGB 0..255)."""

    radii: np.ndarray  # [3] ellipsoid semi-axes x, y, z
    nose: float
    ears: float
    brow_ridge: float
    chin: float
    eye_depth: float
    neck: float  # relative neck width
    skin: np.ndarray  # [3]
    lips: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    hairline: float  # polar angle of the hairline at the front
    mottling: np.ndarray  # [M,4] random low-frequency skin pattern: direction xyz, phase

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Identity":
        darkness = rng.uniform(0.0, 1.0)
        skin = (1 - darkness) * np.array([236, 198, 170]) + darkness * np.array([110, 70, 48])
        skin = np.clip(skin * rng.uniform(0.93, 1.07, 3), 0, 255)
        hair_palette = np.array([[35, 25, 20], [90, 60, 35], [200, 160, 95], [140, 60, 30], [60, 60, 62]])
        iris_palette = np.array([[70, 45, 25], [60, 100, 150], [80, 110, 70], [40, 30, 25]])
        mottling_dirs = rng.normal(size=(6, 3))
        mottling = np.concatenate([mottling_dirs * rng.uniform(2.0, 5.0, (6, 1)), rng.uniform(0, 2 * np.pi, (6, 1))], 1)
        shape = {"radii": np.array([rng.uniform(*bounds) for bounds in SHAPE_RANGES["radii"]])}
        shape |= {name: rng.uniform(*SHAPE_RANGES[name]) for name in SHAPE_RANGES if name != "radii"}
        return cls(
            **shape,
            skin=skin,
            lips=np.clip(skin * np.array([0.82, 0.5, 0.52]) + rng.uniform(-10, 10, 3), 0, 255),
            hair=np.clip(hair_palette[rng.integers(len(hair_palette))] + rng.uniform(-12, 12, 3), 0, 255),
            iris=np.clip(iris_palette[rng.integers(len(iris_palette))] + rng.uniform(-10, 10, 3), 0, 255),
            hairline=rng.uniform(0.70, 0.76) * np.pi,
            mottling=mottling,
        )

    def with_average_shape(self) -> "Identity":
        """This identity's colours on the average head shape (the middle of every SHAPE_RANGES entry)."""
        return replace(self, **AVERAGE_SHAPE)


@dataclass
class Expression:
    """Per-frame expression weights: jaw 0..1 (open), smile 0..1, blink 0..1 (closed), brows -0.5..1 (raised)."""

    jaw: float = 0.0
    smile: float = 0.0
    blink: float = 0.0
    brows: float = 0.0


def shape_relief(identity: Identity, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Radial offsets [V] (mm) of the identity's features: nose, ears, brow ridge, chin, eye sockets."""
    return (
        identity.nose * angular_bump(theta, phi, NOSE_THETA, 0.0, 0.08 * np.pi, 0.19)
        + identity.ears * (angular_bump(theta, phi, 0.52 * np.pi, np.pi / 2, 0.06 * np.pi, 0.12)
                           + angular_bump(theta, phi, 0.52 * np.pi, -np.pi / 2, 0.06 * np.pi, 0.12))
        + identity.brow_ridge * angular_bump(theta, phi, BROW_THETA, 0.0, 0.03 * np.pi, 0.45)
        + identity.chin * angular_bump(theta, phi, 0.29 * np.pi, 0.0, 0.05 * np.pi, 0.3)
        - identity.eye_depth * (angular_bump(theta, phi, EYE_THETA, EYE_PHI, 0.035 * np.pi, 0.13)
                                + angular_bump(theta, phi, EYE_THETA, -EYE_PHI, 0.035 * np.pi, 0.13))
    )


def neck_scale(neck: float, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """[V] factor on x and z that narrows the part below the jaw to `neck` (a bit less at the front)."""
    front = smoothstep(0.0, 0.6, np.cos(phi))
    return 1.0 - (1.0 - neck) * smoothstep(0.3 * np.pi, 0.12 * np.pi, theta) * (1 - 0.3 * front)


def neutral_shape(identity: Identity, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Vertex positions [V,3] (mm) of the identity with a neutral face."""
    unit = directions(theta, phi)
    points = unit * identity.radii + unit * shape_relief(identity, theta, phi)[:, None]
    # A neck below the jaw: narrow the lower part in x and z, keep it a bit in front.
    neck = neck_scale(identity.neck, theta, phi)
    points[:, 0] *= neck
    points[:, 2] *= neck
    points[:, 1] -= 20.0 * smoothstep(0.25 * np.pi, 0.0, theta)
    # A flat cut under the neck rather than a point.
    points[:, 1] = np.maximum(points[:, 1], -identity.radii[1] - 8.0)
    return points


def expression_offsets(theta: np.ndarray, phi: np.ndarray, expression: Expression) -> np.ndarray:
    """Smooth vertex displacements [V,3] (mm) of an expression; zero for the neutral expression."""
    offsets = np.zeros(theta.shape + (3,))
    front = smoothstep(0.2, 0.7, np.cos(phi))
    # Jaw: everything below the mouth on the front swings down and slightly back.
    below_mouth = smoothstep(MOUTH_THETA + 0.02 * np.pi, MOUTH_THETA - 0.06 * np.pi, theta) * front
    below_mouth *= smoothstep(0.12 * np.pi, 0.22 * np.pi, theta)  # the neck stays put
    offsets[:, 1] -= 14.0 * expression.jaw * below_mouth
    offsets[:, 2] -= 4.0 * expression.jaw * below_mouth
    # Smile: the mouth corners move up, out and back.
    for side in (-1.0, 1.0):
        corner = angular_bump(theta, phi, MOUTH_THETA, side * 0.3, 0.05 * np.pi, 0.12)
        offsets[:, 0] += side * 3.0 * expression.smile * corner
        offsets[:, 1] += 6.0 * expression.smile * corner
        offsets[:, 2] -= 2.0 * expression.smile * corner
    # Brows: the band above the eyes moves up.
    brows = angular_bump(theta, phi, BROW_THETA, 0.0, 0.045 * np.pi, 0.5)
    offsets[:, 1] += 6.0 * expression.brows * brows
    # Blink: the lids bulge a little as they close.
    for side in (-1.0, 1.0):
        lid = angular_bump(theta, phi, EYE_THETA, side * EYE_PHI, 0.03 * np.pi, 0.1)
        offsets[:, 2] += 2.0 * expression.blink * lid
    return offsets


def to_topology(grid: HeadGrid, verts: np.ndarray):
    """The grid as an `ava.nn.uvmap.Topology` with `verts` [V,3] as its template positions."""
    from ava.nn.uvmap import Topology

    return Topology(
        verts=torch.from_numpy(verts.astype(np.float32)),
        uvs=torch.from_numpy(grid.uvs.astype(np.float32)),
        faces=torch.from_numpy(grid.faces),
        face_uvs=torch.from_numpy(grid.face_uvs),
    )
