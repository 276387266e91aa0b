"""Synthetic heads on a given face topology (the Ava-256 `face_topology.obj`): its template mesh,
moved into the synthetic head frame and deformed per identity and expression.

The template is placed by three landmarks read at fixed UV positions of the Ava-256 layout (the
centres of the two eyes and of the mouth; `LANDMARK_UVS`): x runs from one eye to the other
(towards the subject's left ear), y from the mouth up to the eyes, z = x cross y points out of the
face (the side of the eyes away from the mesh's centroid), and the origin is the head's centre:
between the eyes in x, the middle of the mesh's front-to-back extent in z, and in y the height
from which the eyes are seen at the procedural head's eye angle. That is head.py's frame, so the
dome, head poses and cameras need nothing new.

Every surface point then gets angles (theta, phi) on head.py's parameterisation: the angles of
its direction from the centre, warped piecewise linearly so that the template's mouth and eyes land
on head.py's MOUTH_THETA, EYE_THETA and EYE_PHI. Through them the procedural head's ideas apply to the
template unchanged: per identity, the template is scaled by the identity's radii over the average
radii and gets the difference between the identity's and the average identity's feature relief
(nose, ears, brow ridge, chin, jaw, cheeks, lips, eye sockets, forehead, hair volume, ...),
feature positions (eye spacing, mouth width, ...) and neck width; per frame, head.py's expression
offsets (every control of ava.synth.expressions); and the texture is painted from every texel's angles
(interpolated over the UV layout), so eyes, brows, lips and hairline sit where the template's are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ava.errors import UserError
from ava.synth.head import (
    EYE_PHI,
    EYE_THETA,
    MOUTH_THETA,
    Expression,
    Identity,
    expression_offsets,
    feature_shifts,
    neck_scale,
    shape_relief,
)

# UV positions (u right, v up) of landmarks of the Ava-256 face topology: the middles of the
# closed eyes (the image's right and left eye) and of the closed mouth.
LANDMARK_UVS = {"eye_a": (0.382, 0.657), "eye_b": (0.618, 0.657), "mouth": (0.500, 0.388)}
# A template whose landmarks are not this far apart (mm) is not laid out like the Ava-256 topology.
_EYE_DISTANCE_MM = (35.0, 110.0)
_EYE_TO_MOUTH_MM = (35.0, 140.0)


@dataclass
class TemplateHead:
    """A topology's template in the synthetic head frame, with head.py angles for every vertex."""

    positions: np.ndarray  # f64 [V,3] template in the head frame (mm)
    theta_knots: tuple[float, float]  # polar angles of the template's mouth and eyes seen from the centre
    phi_knot: float  # azimuth of the template's eyes

    def angles(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(theta, phi) [...] on head.py's parameterisation of head-frame points [...,3]: the
        angles of their directions, warped so that the template's mouth and eyes get head.py's."""
        theta, phi = _angles(points)
        mouth, eyes = self.theta_knots
        theta = np.interp(theta, [0.0, mouth, eyes, np.pi], [0.0, MOUTH_THETA, EYE_THETA, np.pi])
        phi = np.sign(phi) * np.interp(np.abs(phi), [0.0, self.phi_knot, np.pi], [0.0, EYE_PHI, np.pi])
        return theta, phi

    @property
    def theta(self) -> np.ndarray:
        """f64 [V] every vertex's polar angle (0 at the neck)."""
        return self._vertex_angles[0]

    @property
    def phi(self) -> np.ndarray:
        """f64 [V] every vertex's azimuth (0 at the front, + towards the subject's left)."""
        return self._vertex_angles[1]

    def __post_init__(self) -> None:
        self._vertex_angles = self.angles(self.positions)


def uv_surface_point(verts: np.ndarray, uvs: np.ndarray, faces: np.ndarray, face_uvs: np.ndarray,
                     uv: tuple[float, float]) -> np.ndarray | None:
    """[3] the mesh point whose texture coordinate is `uv`, or None where no UV triangle covers it."""
    corners = uvs[face_uvs]  # [F,3,2]
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    point = np.asarray(uv, dtype=np.float64)
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    safe = np.where(area == 0, 1.0, area)
    w_a = ((b[:, 0] - point[0]) * (c[:, 1] - point[1]) - (b[:, 1] - point[1]) * (c[:, 0] - point[0])) / safe
    w_b = ((c[:, 0] - point[0]) * (a[:, 1] - point[1]) - (c[:, 1] - point[1]) * (a[:, 0] - point[0])) / safe
    w_c = 1.0 - w_a - w_b
    inside = np.nonzero((area != 0) & (w_a >= -1e-9) & (w_b >= -1e-9) & (w_c >= -1e-9))[0]
    if not len(inside):
        return None
    face = inside[0]
    weights = np.array([w_a[face], w_b[face], w_c[face]])
    return weights @ verts[faces[face]]


def _angles(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(theta, phi) of the directions of `points` [...,3] (head.py's convention)."""
    radius = np.linalg.norm(points, axis=-1).clip(min=1e-9)
    return np.arccos(np.clip(-points[..., 1] / radius, -1.0, 1.0)), np.arctan2(points[..., 0], points[..., 2])


def fit_template(topology, source: str = "the topology") -> TemplateHead:
    """Places `topology`'s template (an `ava.nn.uvmap.Topology`) in the synthetic head frame.

    Raises UserError when the UV landmarks are missing or implausibly placed (an OBJ not laid out
    like the Ava-256 face topology).
    """
    verts = topology.verts.double().numpy()
    uvs = topology.uvs.double().numpy()
    faces = topology.faces.numpy()
    face_uvs = topology.face_uvs.numpy()
    landmarks = {name: uv_surface_point(verts, uvs, faces, face_uvs, uv) for name, uv in LANDMARK_UVS.items()}
    layout = ", ".join(f"{name} at UV {uv}" for name, uv in LANDMARK_UVS.items())
    if any(point is None for point in landmarks.values()):
        raise UserError(f"{source} has no surface at the Ava-256 landmark UVs ({layout}); "
                        "--topology needs an OBJ with the Ava-256 face topology's UV layout")
    eye_a, eye_b, mouth = landmarks["eye_a"], landmarks["eye_b"], landmarks["mouth"]
    between_eyes = (eye_a + eye_b) / 2
    eye_distance = float(np.linalg.norm(eye_a - eye_b))
    eye_to_mouth = float(np.linalg.norm(between_eyes - mouth))
    if not (_EYE_DISTANCE_MM[0] <= eye_distance <= _EYE_DISTANCE_MM[1]
            and _EYE_TO_MOUTH_MM[0] <= eye_to_mouth <= _EYE_TO_MOUTH_MM[1]):
        raise UserError(f"{source}: its landmarks ({layout}) are {eye_distance:.0f} mm apart (eyes) and "
                        f"{eye_to_mouth:.0f} mm (eyes to mouth); expected a head in millimetres with the "
                        "Ava-256 face topology's UV layout")
    used = np.zeros(len(verts), dtype=bool)
    used[faces.reshape(-1)] = True
    centroid = verts[used].mean(axis=0)
    lateral = (eye_a - eye_b) / eye_distance
    up = between_eyes - mouth
    up = up - lateral * (up @ lateral)
    up /= np.linalg.norm(up)
    forward = np.cross(lateral, up)
    if forward @ (between_eyes - centroid) < 0:  # the face is on the far side: the eyes were swapped
        lateral, forward = -lateral, -forward
    rotation = np.stack([lateral, up, forward])  # rows: the head frame's axes in template coordinates
    local = (verts - between_eyes) @ rotation.T  # eyes at (+-d/2, 0, 0), mouth at (~0, -h, 0)
    extent = local[used]
    centre_z = (extent[:, 2].min() + extent[:, 2].max()) / 2
    # The eyes are seen from the centre at polar angle EYE_THETA: y_eye - y_c = -cot(theta)(z_eye - z_c).
    centre_y = np.cos(EYE_THETA) / np.sin(EYE_THETA) * (0.0 - centre_z)
    positions = local - np.array([0.0, centre_y, centre_z])
    eye_theta, eye_phi = _angles(np.array([eye_distance / 2, -centre_y, -centre_z]))
    mouth_theta, _ = _angles((mouth - between_eyes) @ rotation.T - np.array([0.0, centre_y, centre_z]))
    if not 0.0 < mouth_theta < eye_theta < np.pi:
        raise UserError(f"{source}: the mouth is not below the eyes seen from the head's centre")
    return TemplateHead(positions, (float(mouth_theta), float(eye_theta)), float(eye_phi))


def template_vertices(template: TemplateHead, identity: Identity, expression: Expression) -> np.ndarray:
    """f32 [V,3] head-frame mesh (mm) of `identity` making `expression`, built on the template."""
    average = identity.with_average_shape()
    theta, phi = template.theta, template.phi
    outward = template.positions / np.linalg.norm(template.positions, axis=1, keepdims=True).clip(min=1e-9)
    relief = shape_relief(identity, theta, phi) - shape_relief(average, theta, phi)
    points = template.positions * (identity.radii / average.radii) + outward * relief[:, None]
    points += feature_shifts(identity, theta, phi) - feature_shifts(average, theta, phi)
    neck = neck_scale(identity.neck, theta, phi) / neck_scale(average.neck, theta, phi)
    points[:, 0] *= neck
    points[:, 2] *= neck
    return (points + expression_offsets(theta, phi, expression)).astype(np.float32)


def texel_angles(template: TemplateHead, vertex_index: np.ndarray, bary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(theta, phi) [S,S] of every texel of a UV map (vertex_index i64 [3,S,S], bary [3,S,S]): the
    angles of the template's surface point under the texel, so a landmark's texel gets exactly the
    landmark's angles."""
    points = np.einsum("kij,kijc->ijc", bary.astype(np.float64), template.positions[vertex_index])
    return template.angles(points)
