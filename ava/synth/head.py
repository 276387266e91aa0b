"""A procedural head: topology with UVs, per-identity shape and look (`Identity`), per-frame
expression offsets (the controls of ava.synth.expressions).

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

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from ava.synth.expressions import Expression


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


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles wrapped to [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2.0 * np.pi) - np.pi


def angular_bump(theta: np.ndarray, phi: np.ndarray, centre_theta: float, centre_phi: float,
                 width_theta: float, width_phi: float) -> np.ndarray:
    """A smooth anisotropic Gaussian on the sphere around (centre_theta, centre_phi); 1 at the centre."""
    dphi = wrap_angle(phi - centre_phi)
    return np.exp(-0.5 * (((theta - centre_theta) / width_theta) ** 2 + (dphi / width_phi) ** 2))


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """0 at edge0, 1 at edge1 (either order), cubic in between; a step when the edges meet."""
    span = np.asarray(edge1 - edge0, dtype=np.float64)
    safe = np.where(span == 0, 1.0, span)
    t = np.where(span == 0, (np.asarray(x) >= edge0).astype(np.float64), np.clip((x - edge0) / safe, 0.0, 1.0))
    return t * t * (3.0 - 2.0 * t)


# Feature positions in (theta, phi); theta grows from the neck to the crown. They are the same for
# every identity (like landmarks of a registered topology, they fix where the texture paints each
# feature); identities move the features in the head frame instead (`feature_shifts`).
MOUTH_THETA = 0.36 * np.pi
NOSE_THETA = 0.47 * np.pi
EYE_THETA = 0.55 * np.pi
BROW_THETA = 0.62 * np.pi
EYE_PHI = 0.36
# How far the iris moves with the gaze at +-1 (radians of theta and phi).
GAZE_THETA = 0.012 * np.pi
GAZE_PHI = 0.05


# The ranges Identity.sample draws its shape from: mm, except the relative neck width, the nose's
# relative length and width, the ears' relative size and the angles (radians).
SHAPE_RANGES: dict[str, tuple] = {
    "radii": ((69.0, 85.0), (100.0, 118.0), (84.0, 100.0)),  # ellipsoid semi-axes x, y, z
    "nose": (9.0, 18.0),  # protrusion of the nose
    "nose_width": (0.7, 1.4),
    "nose_length": (0.8, 1.3),
    "nose_bridge": (0.0, 5.0),
    "nose_tip": (-3.0, 3.0),  # the tip up (+) or down
    "ears": (5.0, 12.0),  # protrusion of the ears
    "ear_size": (0.8, 1.25),
    "ear_height": (-0.04 * np.pi, 0.04 * np.pi),
    "brow_ridge": (2.0, 7.0),
    "chin": (3.0, 11.0),
    "chin_height": (-4.0, 4.0),
    "jaw_width": (-4.0, 6.0),  # outward at the jaw's angles
    "cheekbones": (0.0, 7.0),
    "cheek_fullness": (0.0, 5.0),
    "eye_depth": (3.0, 8.0),
    "eye_spacing": (-4.0, 4.0),  # each eye outwards (+) or inwards
    "eye_height": (-3.0, 3.0),
    "lip_fullness": (1.0, 5.0),
    "mouth_width": (-4.0, 4.0),  # each corner outwards (+) or inwards
    "mouth_height": (-3.0, 3.0),
    "forehead": (-6.0, 4.0),  # the forehead forwards (+) or sloping back
    "occiput": (-3.0, 8.0),  # the back of the head
    "neck": (0.48, 0.64),
    "hair_volume": (0.0, 12.0),  # hair thickness over the scalp
    "asymmetry": ((-2.0, 2.0),) * 4,  # coefficients of a low-frequency left/right asymmetry
}
SHAPE_FIELDS = tuple(SHAPE_RANGES)
# Colour and texture parameters with a range (mm-free: colours 0..255, angles in radians).
LOOK_RANGES: dict[str, tuple] = {
    "mottling_strength": (0.04, 0.12),
    "blush": (0.0, 30.0),
    "hairline": (0.68 * np.pi, 0.80 * np.pi),  # polar angle of the hairline at the front
    "temple_recession": (0.0, 0.08 * np.pi),
    "hair_drop": (0.2 * np.pi, 0.35 * np.pi),  # how much lower the hairline is at the back
    "hair_streaks": (45.0, 80.0),  # spatial frequency of the hair's streaks
    "brow_thickness": (0.008 * np.pi, 0.02 * np.pi),
    "brow_arch": (0.0, 0.02 * np.pi),
    "brow_length": (0.2, 0.32),
    "brow_gap": (0.06, 0.14),
    "eye_size": (0.8, 1.25),
    "iris_size": (0.85, 1.15),
    "lashes": (0.2, 0.8),  # darkness of the lash line
    "lip_thickness": (0.7, 1.3),
}
SKIN_LIGHT = np.array([240.0, 204.0, 178.0])
SKIN_DARK = np.array([88.0, 56.0, 40.0])
HAIR_PALETTE = np.array([[30, 22, 18], [70, 48, 32], [115, 80, 50], [200, 160, 95], [235, 215, 170],
                         [150, 62, 30], [120, 118, 118], [45, 40, 42]], dtype=np.float64)
IRIS_PALETTE = np.array([[70, 45, 25], [40, 28, 22], [60, 100, 150], [80, 110, 70], [120, 95, 50],
                         [110, 120, 130]], dtype=np.float64)


def _middle(bounds) -> np.ndarray | float:
    bounds = np.asarray(bounds, dtype=np.float64)
    return bounds.mean(axis=-1) if bounds.ndim > 1 else float(bounds.mean())


@dataclass
class Identity:
    """Shape, colour and texture parameters of one synthetic subject (mm, RGB 0..255, radians;
    see SHAPE_RANGES and LOOK_RANGES for what each means and its range)."""

    # shape
    radii: np.ndarray  # [3] ellipsoid semi-axes x, y, z
    nose: float
    nose_width: float
    nose_length: float
    nose_bridge: float
    nose_tip: float
    ears: float
    ear_size: float
    ear_height: float
    brow_ridge: float
    chin: float
    chin_height: float
    jaw_width: float
    cheekbones: float
    cheek_fullness: float
    eye_depth: float
    eye_spacing: float
    eye_height: float
    lip_fullness: float
    mouth_width: float
    mouth_height: float
    forehead: float
    occiput: float
    neck: float  # relative neck width
    hair_volume: float
    asymmetry: np.ndarray  # [4]
    # look
    skin: np.ndarray  # [3]
    lip_colour: np.ndarray  # [3]
    hair_colour: np.ndarray  # [3]
    brow_colour: np.ndarray  # [3]
    iris_colour: np.ndarray  # [3]
    mottling: np.ndarray  # [M,4] random low-frequency skin pattern: direction xyz (with frequency), phase
    freckle_waves: np.ndarray  # [4,4] high-frequency waves whose peaks make freckles: direction xyz, phase
    mottling_strength: float
    freckles: float  # 0: none
    blush: float
    beard: float  # stubble density, 0: none
    hairline: float
    temple_recession: float
    hair_drop: float
    hair_streaks: float
    brow_thickness: float
    brow_arch: float
    brow_length: float
    brow_gap: float
    eye_size: float
    iris_size: float
    lashes: float
    lip_thickness: float

    @classmethod
    def sample(cls, rng: np.random.Generator, variation: float = 1.0) -> "Identity":
        """A random subject. `variation` scales every parameter's deviation from the average
        identity (0: every subject is the average; 1: the ranges above; more: beyond them)."""
        v = float(variation)

        def scaled(value, middle):
            return np.asarray(middle) + v * (np.asarray(value, dtype=np.float64) - np.asarray(middle))

        def draw(bounds):
            bounds = np.asarray(bounds, dtype=np.float64)
            value = rng.uniform(bounds[..., 0], bounds[..., 1])
            result = scaled(value, _middle(bounds))
            return result if bounds.ndim > 1 else float(result)

        values = {name: draw(bounds) for name, bounds in SHAPE_RANGES.items()}
        values |= {name: draw(bounds) for name, bounds in LOOK_RANGES.items()}
        average = cls.average()
        darkness = rng.beta(1.3, 1.3)
        undertone = np.array([1.0, 1.0, 1.0]) + rng.uniform(-0.06, 0.06) * np.array([1.0, 0.0, -1.0])  # warm/cool
        skin = ((1 - darkness) * SKIN_LIGHT + darkness * SKIN_DARK) * undertone * rng.uniform(0.95, 1.05, 3)
        values["skin"] = np.clip(scaled(skin, average.skin), 0, 255)
        lips = skin * np.array([0.82, 0.52, 0.55]) + rng.uniform(-15, 15, 3)
        values["lip_colour"] = np.clip(scaled(lips, average.lip_colour), 0, 255)
        hair = HAIR_PALETTE[rng.integers(len(HAIR_PALETTE))] + rng.uniform(-12, 12, 3)
        grey = rng.uniform(0.0, 1.0) ** 4  # mostly none, sometimes much
        hair = hair * (1 - grey) + np.array([170.0, 168.0, 165.0]) * grey
        values["hair_colour"] = np.clip(scaled(hair, average.hair_colour), 0, 255)
        brows = hair * rng.uniform(0.45, 1.0) + rng.uniform(-10, 10, 3)
        values["brow_colour"] = np.clip(scaled(brows, average.brow_colour), 0, 255)
        iris = IRIS_PALETTE[rng.integers(len(IRIS_PALETTE))] + rng.uniform(-12, 12, 3)
        values["iris_colour"] = np.clip(scaled(iris, average.iris_colour), 0, 255)
        directions_ = rng.normal(size=(6, 3))
        values["mottling"] = np.concatenate([directions_ * rng.uniform(2.0, 5.0, (6, 1)), rng.uniform(0, 2 * np.pi, (6, 1))], 1)
        waves = rng.normal(size=(4, 3))
        waves *= rng.uniform(40.0, 70.0, (4, 1)) / np.linalg.norm(waves, axis=1, keepdims=True)
        values["freckle_waves"] = np.concatenate([waves, rng.uniform(0, 2 * np.pi, (4, 1))], 1)
        # Mottling, and features only some subjects have: their amount scales with the variation.
        values["mottling_strength"] = v * rng.uniform(*LOOK_RANGES["mottling_strength"])
        values["freckles"] = v * float(rng.uniform() < 0.3) * rng.uniform(0.3, 1.0)
        values["beard"] = v * float(rng.uniform() < 0.3) * rng.uniform(0.2, 0.9)
        if rng.uniform() < 0.1:  # a bald crown
            values["hairline"] = float(scaled(rng.uniform(0.84, 0.92) * np.pi, _middle(LOOK_RANGES["hairline"])))
        return cls(**values)

    @classmethod
    def average(cls) -> "Identity":
        """The average subject: every range's middle, a mid skin tone, mid-brown hair, no mottling,
        freckles or beard."""
        values = {name: _middle(bounds) for name, bounds in {**SHAPE_RANGES, **LOOK_RANGES}.items()}
        skin = 0.5 * (SKIN_LIGHT + SKIN_DARK)
        values["mottling_strength"] = 0.0
        return cls(**values, skin=skin, lip_colour=skin * np.array([0.82, 0.52, 0.55]),
                   hair_colour=HAIR_PALETTE.mean(axis=0), brow_colour=HAIR_PALETTE.mean(axis=0) * 0.75,
                   iris_colour=IRIS_PALETTE.mean(axis=0), mottling=np.zeros((6, 4)), freckle_waves=np.zeros((4, 4)),
                   freckles=0.0, beard=0.0)

    def with_average_shape(self) -> "Identity":
        """This identity's colours on the average head shape (the middle of every SHAPE_RANGES entry)."""
        return replace(self, **{name: _middle(SHAPE_RANGES[name]) for name in SHAPE_FIELDS})

    def to_dict(self) -> dict:
        """JSON-ready {parameter: number or list} (`from_dict` restores it exactly)."""
        return {f.name: (getattr(self, f.name).tolist() if isinstance(getattr(self, f.name), np.ndarray)
                         else float(getattr(self, f.name))) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> "Identity":
        """The identity `to_dict` wrote; ValueError for missing or unknown parameters."""
        names = {f.name for f in fields(cls)}
        if set(values) != names:
            raise ValueError(f"identity parameters differ: missing {sorted(names - set(values))}, "
                             f"unknown {sorted(set(values) - names)}")
        return cls(**{name: (np.asarray(value, dtype=np.float64) if isinstance(value, list) else float(value))
                      for name, value in values.items()})


def hairline_angle(identity: Identity, phi: np.ndarray) -> np.ndarray:
    """Polar angle of the hairline at azimuth phi: highest at the front, receding at the temples,
    lower towards the back."""
    front = np.cos(phi)
    temples = np.exp(-0.5 * ((np.abs(wrap_angle(phi)) - 0.45) / 0.15) ** 2)
    return identity.hairline + identity.temple_recession * temples - identity.hair_drop * (1.0 - front) / 2.0


def shape_relief(identity: Identity, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Radial offsets [V] (mm) of the identity's features: nose, ears, brow ridge, chin, jaw,
    cheeks, lips, eye sockets, forehead, the back of the head, hair volume and an asymmetry."""
    relief = (
        identity.nose * angular_bump(theta, phi, NOSE_THETA, 0.0, 0.08 * np.pi * identity.nose_length,
                                     0.19 * identity.nose_width)
        + identity.nose_bridge * angular_bump(theta, phi, 0.51 * np.pi, 0.0, 0.04 * np.pi, 0.07)
        + identity.brow_ridge * angular_bump(theta, phi, BROW_THETA, 0.0, 0.03 * np.pi, 0.45)
        + identity.chin * angular_bump(theta, phi, 0.29 * np.pi, 0.0, 0.05 * np.pi, 0.3)
        + identity.lip_fullness * angular_bump(theta, phi, MOUTH_THETA, 0.0, 0.025 * np.pi, 0.22)
        + identity.forehead * angular_bump(theta, phi, 0.72 * np.pi, 0.0, 0.07 * np.pi, 0.5)
        + identity.occiput * angular_bump(theta, phi, 0.62 * np.pi, np.pi, 0.15 * np.pi, 0.7)
        + identity.hair_volume * smoothstep(hairline_angle(identity, phi) - 0.02 * np.pi,
                                            hairline_angle(identity, phi) + 0.08 * np.pi, theta)
    )
    for side in (-1.0, 1.0):
        relief += identity.ears * angular_bump(theta, phi, 0.52 * np.pi + identity.ear_height, side * np.pi / 2,
                                               0.06 * np.pi * identity.ear_size, 0.12 * identity.ear_size)
        relief -= identity.eye_depth * angular_bump(theta, phi, EYE_THETA, side * EYE_PHI, 0.035 * np.pi, 0.13)
        relief += identity.cheekbones * angular_bump(theta, phi, 0.5 * np.pi, side * 0.62, 0.04 * np.pi, 0.2)
        relief += identity.cheek_fullness * angular_bump(theta, phi, 0.41 * np.pi, side * 0.55, 0.06 * np.pi, 0.25)
        relief += identity.jaw_width * angular_bump(theta, phi, 0.3 * np.pi, side * 1.05, 0.06 * np.pi, 0.3)
    a = identity.asymmetry  # low-frequency terms that are odd in phi: one side differs from the other
    face = angular_bump(theta, phi, 0.5 * np.pi, 0.0, 0.2 * np.pi, 0.9)
    relief += face * (a[0] * np.sin(phi) + a[1] * np.sin(phi) * np.cos(2 * theta) + a[2] * np.sin(2 * phi)
                      + a[3] * np.sin(phi) * np.sin(3 * theta))
    return relief


def feature_shifts(identity: Identity, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Displacements [V,3] (mm) that move the identity's features in the head frame: eye spacing and
    height, mouth width and height, chin height, nose tip (all zero for the average identity)."""
    shifts = np.zeros(np.shape(theta) + (3,))
    for side in (-1.0, 1.0):
        eye = angular_bump(theta, phi, EYE_THETA, side * EYE_PHI, 0.06 * np.pi, 0.2)
        shifts[..., 0] += side * identity.eye_spacing * eye
        shifts[..., 1] += identity.eye_height * eye
        corner = angular_bump(theta, phi, MOUTH_THETA, side * 0.26, 0.05 * np.pi, 0.16)
        shifts[..., 0] += side * identity.mouth_width * corner
    shifts[..., 1] += identity.mouth_height * angular_bump(theta, phi, MOUTH_THETA, 0.0, 0.05 * np.pi, 0.35)
    shifts[..., 1] += identity.chin_height * angular_bump(theta, phi, 0.28 * np.pi, 0.0, 0.06 * np.pi, 0.4)
    shifts[..., 1] += identity.nose_tip * angular_bump(theta, phi, NOSE_THETA, 0.0, 0.035 * np.pi, 0.12)
    return shifts


def neck_scale(neck: float, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """[V] factor on x and z that narrows the part below the jaw to `neck` (a bit less at the front)."""
    front = smoothstep(0.0, 0.6, np.cos(phi))
    return 1.0 - (1.0 - neck) * smoothstep(0.3 * np.pi, 0.12 * np.pi, theta) * (1 - 0.3 * front)


def neutral_shape(identity: Identity, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Vertex positions [V,3] (mm) of the identity with a neutral face."""
    unit = directions(theta, phi)
    points = unit * identity.radii + unit * shape_relief(identity, theta, phi)[:, None]
    points += feature_shifts(identity, theta, phi)
    # A neck below the jaw: narrow the lower part in x and z, keep it a bit in front.
    neck = neck_scale(identity.neck, theta, phi)
    points[:, 0] *= neck
    points[:, 2] *= neck
    points[:, 1] -= 20.0 * smoothstep(0.25 * np.pi, 0.0, theta)
    # A flat cut under the neck rather than a point.
    points[:, 1] = np.maximum(points[:, 1], -identity.radii[1] - 8.0)
    return points


def expression_offsets(theta: np.ndarray, phi: np.ndarray, expression: Expression) -> np.ndarray:
    """Smooth vertex displacements [V,3] (mm) of an expression (ava.synth.expressions); zero for
    the neutral expression. Controls on one side move that side (+x is the subject's left)."""
    e = expression
    offsets = np.zeros(np.shape(theta) + (3,))
    unit = directions(theta, phi)
    x, y, z = offsets[..., 0], offsets[..., 1], offsets[..., 2]  # views: writes go to offsets

    def bump(centre_theta, centre_phi, width_theta, width_phi):
        return angular_bump(theta, phi, centre_theta, centre_phi, width_theta, width_phi)

    # Jaw: everything below the mouth on the front swings down and slightly back, or sideways.
    below_mouth = smoothstep(MOUTH_THETA + 0.02 * np.pi, MOUTH_THETA - 0.06 * np.pi, theta)
    below_mouth *= smoothstep(0.12 * np.pi, 0.22 * np.pi, theta)  # the neck stays put
    if e.jaw_open:
        lower = below_mouth * smoothstep(0.2, 0.7, np.cos(phi))
        y -= 12.0 * e.jaw_open * lower
        z -= 3.5 * e.jaw_open * lower
    if e.jaw_sideways:
        x += 6.0 * e.jaw_sideways * below_mouth * smoothstep(-0.3, 0.6, np.cos(phi))
    lips = bump(MOUTH_THETA, 0.0, 0.035 * np.pi, 0.25)
    if e.lip_funnel:
        z += 8.0 * e.lip_funnel * lips
        y += e.lip_funnel * (2.0 * bump(MOUTH_THETA + 0.02 * np.pi, 0.0, 0.015 * np.pi, 0.18)
                             - 3.0 * bump(MOUTH_THETA - 0.02 * np.pi, 0.0, 0.015 * np.pi, 0.18))
    if e.lip_pucker:
        z += 9.0 * e.lip_pucker * bump(MOUTH_THETA, 0.0, 0.03 * np.pi, 0.2)
    if e.cheek_puff:
        z += 2.0 * e.cheek_puff * lips
    for side, smile, frown, blink in ((1.0, e.smile_left, e.frown_left, e.blink_left),
                                      (-1.0, e.smile_right, e.frown_right, e.blink_right)):
        corner = bump(MOUTH_THETA, side * 0.28, 0.035 * np.pi, 0.1)
        x -= side * (3.5 * e.lip_funnel + 5.0 * e.lip_pucker) * corner
        if smile:
            raised = bump(MOUTH_THETA + 0.005 * np.pi, side * 0.3, 0.05 * np.pi, 0.12)
            x += side * 4.0 * smile * raised
            y += 8.0 * smile * raised
            z -= 2.5 * smile * raised
            cheek = bump(0.45 * np.pi, side * 0.45, 0.05 * np.pi, 0.18)
            y += 4.0 * smile * cheek
            offsets += (2.0 * smile * cheek)[..., None] * unit
        if frown:  # the corner and the skin below it are pulled down; the chin bunches up
            lowered = bump(MOUTH_THETA - 0.02 * np.pi, side * 0.28, 0.05 * np.pi, 0.14)
            y -= 7.0 * frown * lowered
            x += side * 1.5 * frown * lowered
            z += 3.0 * frown * bump(0.3 * np.pi, side * 0.08, 0.035 * np.pi, 0.15)
        if e.cheek_puff:
            offsets += (9.0 * e.cheek_puff * bump(0.42 * np.pi, side * 0.55, 0.07 * np.pi, 0.28))[..., None] * unit
        if e.lip_pucker:
            offsets -= (1.5 * e.lip_pucker * bump(0.42 * np.pi, side * 0.5, 0.04 * np.pi, 0.15))[..., None] * unit
        if blink:  # the upper lid comes down over the eye, bulging a little; the lower lid rises
            upper = bump(EYE_THETA + 0.02 * np.pi, side * EYE_PHI, 0.025 * np.pi, 0.11)
            lower = bump(EYE_THETA - 0.02 * np.pi, side * EYE_PHI, 0.015 * np.pi, 0.1)
            y += blink * (2.0 * lower - 7.0 * upper)
            z += 2.5 * blink * upper
        if e.gaze_horizontal or e.gaze_vertical:  # the cornea's bulge follows the gaze, under the lid
            centre = (EYE_THETA, side * EYE_PHI)
            looking = (EYE_THETA + GAZE_THETA * e.gaze_vertical, side * EYE_PHI + GAZE_PHI * e.gaze_horizontal)
            cornea = bump(*looking, 0.012 * np.pi, 0.04) - bump(*centre, 0.012 * np.pi, 0.04)
            offsets += (1.5 * (1.0 - blink) * cornea)[..., None] * unit
        inner_value = e.brow_inner_left if side > 0 else e.brow_inner_right
        outer_value = e.brow_outer_left if side > 0 else e.brow_outer_right
        if inner_value or outer_value:
            inner = bump(BROW_THETA, side * 0.15, 0.04 * np.pi, 0.12)
            outer = bump(BROW_THETA, side * 0.45, 0.04 * np.pi, 0.15)
            y += 9.0 * (inner_value * inner + outer_value * outer)
            x -= side * 2.0 * max(-inner_value, 0.0) * inner  # lowered inner brows draw together
            raised = max(inner_value, 0.0) + max(outer_value, 0.0)
            y += 1.0 * raised * bump(0.7 * np.pi, side * 0.3, 0.06 * np.pi, 0.3)  # the forehead follows
        if e.nose_wrinkle:  # the nostrils flare and the cheeks beside the nose rise
            x += side * 2.0 * e.nose_wrinkle * bump(NOSE_THETA - 0.04 * np.pi, side * 0.09, 0.02 * np.pi, 0.06)
            y += 4.0 * e.nose_wrinkle * bump(0.46 * np.pi, side * 0.2, 0.04 * np.pi, 0.1)
    if e.nose_wrinkle:
        bridge = bump(0.51 * np.pi, 0.0, 0.03 * np.pi, 0.1)
        y += 4.5 * e.nose_wrinkle * bridge
        z -= 2.0 * e.nose_wrinkle * bridge
        y += 2.5 * e.nose_wrinkle * bump(MOUTH_THETA + 0.025 * np.pi, 0.0, 0.015 * np.pi, 0.2)  # upper lip
    if e.tongue_out:  # the tongue comes out, pushing the lower lip down and forward
        tongue = bump(MOUTH_THETA - 0.025 * np.pi, 0.0, 0.025 * np.pi, 0.09)
        lower_lip = bump(MOUTH_THETA - 0.03 * np.pi, 0.0, 0.03 * np.pi, 0.2)
        z += e.tongue_out * (12.0 * tongue + 3.0 * lower_lip)
        y -= e.tongue_out * (4.0 * tongue + 3.0 * lower_lip)
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
