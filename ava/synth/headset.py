"""Synthetic headset sessions: five near-infrared views from cameras rigidly mounted on the face.

The real Ava-256 release pairs each dome capture with a headset capture (a Quest Pro with five IR
cameras) recorded in a separate session from a similar script, so the two takes of a segment
have their own timing and length and no frame of one matches a frame of the other by index.
This module makes the synthetic equivalent, written in exactly the release layout
(`encoder/frame_list.csv`, `encoder/image/cam-*.zip`, docs/data-layout.md):

Timing. Each dome segment of n frames gets a headset segment of m != n frames. Headset frame i
shows exactly the expression of dome frame j(i), with j a random monotone warp (j(0) = 0,
j(m-1) = n-1, steps of random speed, so frames repeat where the headset take is slower and are
skipped where it is faster). Because the expression is copied, the truth is exact: the capture's
`encoder_truth.json` (not part of the release layout) lists j(i) and the expression weights.

Cameras. In the head frame (head.py: +x to the subject's left, +y up, +z out of the face, mm), a
canonical rig of five pinhole cameras 30-60 mm from the skin: `cam-cyclop` (wide, below the
visor, looking down at nose, mouth and chin), one camera per eye at its temporal side, one per
mouth corner below the headset. The headset sits a little differently on every subject: one
small rigid transform per subject moves all five cameras together. Each view sees only part of
the face, and part of some views is covered by the headset body (a soft-edged band per camera).

Appearance. Greyscale, lit only by an IR emitter at each camera: the rendered radiance of a
voxel is its IR albedo times a Lambert term for the light at the camera, times (d0/d)^2 for the
inverse-square falloff (d the distance to the camera, d0 the camera's working distance), times
the emitter's beam profile. The IR albedo is a compressed grey of the visible texture (skin of
every tone is much closer in the near infrared than in visible light; the mouth cavity and the
pupils stay dark). The shading is baked per view into the templates of the same ground-truth
primitives the dome images use, and raymarched with the same renderer (render.py). Then a sensor
response with a soft shoulder (bright skin close to the emitter compresses rather than clips),
sensor noise and 8-bit quantisation; images are stored as greyscale AVIF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ava.data.calibration import look_at_rotation, rotation_about_axis
from ava.data.layout import ENCODER_CAMERAS
from ava.synth.expressions import Expression
from ava.synth.head import EYE_PHI, EYE_THETA, MOUTH_THETA, directions

# Radii (mm) of an average synthetic head (head.Identity.sample draws x 69-85, y 100-118, z 84-100):
# the canonical rig is built around it.
_MEAN_RADII = np.array([77.0, 109.0, 92.0])
_UP = np.array([0.0, 1.0, 0.0])


@dataclass(frozen=True)
class RigCamera:
    """One headset camera: where it sits and looks on the average head, and what covers its view."""

    name: str
    position: tuple[float, float, float]  # mm, head frame
    target: tuple[float, float, float]  # mm, head frame: the point it looks at
    fov_degrees: float  # horizontal = vertical field of view (square sensor)
    occluder: tuple[float, float, float]  # (nx, ny, c): headset body where nx*x + ny*y > c, x, y in [-1,1]
    working_distance: float  # mm: where the emitter's falloff gives the nominal exposure


def _surface(theta: float, phi: float, inset: float = 0.0) -> tuple[float, float, float]:
    point = directions(np.array(theta), np.array(phi)) * (_MEAN_RADII - inset)
    return tuple(float(value) for value in point)


def _rig() -> tuple[RigCamera, ...]:
    eye = {side: _surface(EYE_THETA, side * EYE_PHI, inset=5.0) for side in (1, -1)}
    corner = {side: _surface(MOUTH_THETA, side * 0.25) for side in (1, -1)}
    chin_mouth = _surface(MOUTH_THETA - 0.04 * math.pi, 0.0)
    cameras = {
        # Below the visor's centre, 50-60 mm in front of the mouth, looking down; the visor covers
        # the top of the image.
        "cam-cyclop": RigCamera("cam-cyclop", (0.0, -18.0, 138.0), chin_mouth, 90.0, (0.0, -1.0, 0.6), 60.0),
    }
    for side, left in ((1, "left"), (-1, "right")):
        ex, ey, ez = eye[side]
        mx, my, mz = corner[side]
        # Subject's left is +x. The eye camera sits at the temporal side of the eye, forward of
        # it; the lens housing covers the nasal edge of its view.
        cameras[f"cam-{left}-eye-atl-temporal"] = RigCamera(
            f"cam-{left}-eye-atl-temporal", (ex + side * 30.0, ey - 6.0, ez + 22.0), (ex, ey, ez), 70.0,
            (1.0, 0.3, 0.62), 38.0)
        # Under the headset's side, looking down and inwards at the mouth corner.
        cameras[f"cam-{left}-mouth"] = RigCamera(
            f"cam-{left}-mouth", (mx + side * 24.0, my + 14.0, mz + 30.0), (mx - side * 8.0, my - 3.0, mz), 75.0,
            (0.2, -1.0, 0.7), 50.0)
    return tuple(cameras[name] for name in ENCODER_CAMERAS)


RIG = _rig()


@dataclass
class HeadsetCamera:
    """A rig camera as fitted on one subject, at the stored image size."""

    name: str
    camrot: np.ndarray  # [3,3] head -> camera (x right, y down, z forward)
    campos: np.ndarray  # [3] mm, head frame
    focal: float  # pixels
    size: int  # square images of size x size pixels
    occluder: np.ndarray  # [3] (nx, ny, c) in normalised image coordinates
    working_distance: float


@dataclass
class HeadsetPlan:
    """Everything random about one subject's headset session."""

    cameras: list[HeadsetCamera]
    frames: list[tuple[str, str]]  # (segment, headset frame id) in file order
    dome_index: np.ndarray  # int [M]: the dome frame (index into the dome frame list) each frame shows
    gain: float  # the subject's IR exposure
    noise_seed: tuple[int, ...]


def monotone_warp(dome_length: int, headset_length: int, rng: np.random.Generator, jitter: float = 1.0) -> np.ndarray:
    """int [headset_length]: non-decreasing dome indices from 0 to dome_length - 1.

    Time runs at a random, smoothly varying speed (log-normal step sizes with spread `jitter`),
    so frames repeat where the headset take is slower and are skipped where it is faster.
    """
    if headset_length == 1:
        return np.zeros(1, dtype=np.int64)
    steps = np.exp(jitter * rng.normal(size=headset_length - 1))
    steps = np.convolve(np.pad(steps, 1, mode="edge"), np.ones(3) / 3, mode="valid")  # speed changes gradually
    time = np.concatenate([[0.0], np.cumsum(steps)])
    time *= (dome_length - 1) / time[-1]
    return np.clip(np.rint(time), 0, dome_length - 1).astype(np.int64)


def headset_length(dome_length: int, rng: np.random.Generator) -> int:
    """A take of the same segment at another tempo: 0.6x to 1.6x as long, never equally long, and
    at least two frames (the first and last frames of both takes show the same expression)."""
    length = max(2, int(round(dome_length * rng.uniform(0.6, 1.6))))
    if length == dome_length:
        length += 1 if rng.uniform() < 0.5 or length == 2 else -1
    return length


def fit_rig(size: int, rng: np.random.Generator) -> list[HeadsetCamera]:
    """The rig on one subject: one rigid offset (a few mm, a few degrees) moves all five cameras."""
    axis = rng.normal(size=3)
    offset_rotation = rotation_about_axis(axis, math.radians(rng.uniform(0.0, 3.0)))
    offset_translation = rng.uniform(-3.0, 3.0, 3)
    pivot = np.array([0.0, 0.0, 90.0])  # the headset pivots about the front of the face
    cameras = []
    for camera in RIG:
        position = offset_rotation @ (np.array(camera.position) - pivot) + pivot + offset_translation
        target = offset_rotation @ (np.array(camera.target) - pivot) + pivot + offset_translation
        rotation = look_at_rotation(position, target, offset_rotation @ _UP)
        focal = (size / 2.0) / math.tan(math.radians(camera.fov_degrees) / 2.0)
        occluder = np.array(camera.occluder) + np.array([0.0, 0.0, rng.uniform(-0.05, 0.05)])
        cameras.append(HeadsetCamera(camera.name, rotation, position, focal, size, occluder, camera.working_distance))
    return cameras


def plan_headset(dome_frames: list[tuple[str, str]], size: int, rng: np.random.Generator,
                 noise_seed: tuple[int, ...]) -> HeadsetPlan:
    """The headset session of a subject whose dome session has `dome_frames` (segment, frame id)."""
    segments: dict[str, list[int]] = {}
    for index, (segment, _) in enumerate(dome_frames):
        segments.setdefault(segment, []).append(index)
    frames: list[tuple[str, str]] = []
    dome_index: list[int] = []
    number = int(rng.integers(100, 20000))
    for segment, indices in segments.items():
        length = headset_length(len(indices), rng)
        for position in monotone_warp(len(indices), length, rng):
            frames.append((segment, str(number)))
            dome_index.append(indices[position])
            number += 1
        number += int(rng.integers(3, 40))  # the headset recording also skips between segments
    return HeadsetPlan(fit_rig(size, rng), frames, np.array(dome_index, dtype=np.int64),
                       float(rng.uniform(0.85, 1.15)), noise_seed)


# --- rendering (in the frame workers) -----------------------------------------------------------


def infrared_albedo(rgb):
    """Near-infrared reflectance 0..1 from visible RGB 0..255 (torch or numpy, channels last).

    Skin reflects NIR strongly whatever its visible tone, so the grey is compressed (gamma 0.6)
    and weighted towards red; dark regions (mouth cavity, pupils, dark hair) stay dark.
    """
    grey = (0.6 * rgb[..., 0] + 0.3 * rgb[..., 1] + 0.1 * rgb[..., 2]) / 255.0
    return grey.clip(0.0, 1.0) ** 0.6


def voxel_positions(primitives):
    """[K,D,D,D,3] head-frame positions (volume units) of every template voxel (align_corners)."""
    import torch

    voxels = primitives.template.shape[1]
    axis = torch.linspace(-1.0, 1.0, voxels, device=primitives.template.device)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")  # template axes are (z, y, x)
    local = torch.stack([x, y, z], dim=-1)  # [D,D,D,3]
    scaled = local[None] / primitives.primscale[:, None, None, None, :]  # [K,D,D,D,3]
    return primitives.primpos[:, None, None, None, :] + torch.einsum("kij,kdhwj->kdhwi", primitives.primrot, scaled)


def shaded_primitives(primitives, camera: HeadsetCamera, gain: float, points):
    """The primitives with their RGB replaced by the IR radiance seen from `camera` (linear grey,
    about 0..255 at the working distance, brighter closer: `sensor_response` compresses it);
    points [K,D,D,D,3] are the voxel positions in mm (`voxel_positions` times the volume radius).

    Per voxel: albedo x (0.15 + 0.85 max(0, n.l)) x (d0/d)^2 x beam, with l the direction to the
    emitter at the camera, n the primitive's surface normal (its local z axis) and the beam
    cos^2 of the angle off the optical axis.
    """
    import torch

    from ava.synth.render import Primitives

    campos = torch.from_numpy(camera.campos).float().to(points.device)
    to_camera = campos - points
    distance = to_camera.norm(dim=-1).clamp(min=1.0)
    light = to_camera / distance[..., None]
    normal = primitives.primrot[:, :, 2]  # [K,3]
    lambert = torch.einsum("kdhwi,ki->kdhw", light, normal).clamp(min=0.0)
    axis = torch.from_numpy(camera.camrot[2]).float().to(points.device)
    beam = torch.einsum("kdhwi,i->kdhw", -light, axis).clamp(min=0.0) ** 2
    falloff = (camera.working_distance / distance) ** 2
    radiance = infrared_albedo(primitives.template[..., :3]) * (0.15 + 0.85 * lambert) * falloff * beam
    template = primitives.template.clone()
    template[..., :3] = (170.0 * gain * radiance)[..., None]
    return Primitives(primitives.primpos, primitives.primrot, primitives.primscale, template)


def occluded_view(radiance: np.ndarray, camera: HeadsetCamera) -> np.ndarray:
    """[S,S] radiance with the headset body painted over where the camera's occluder covers it.

    The body is close to the emitter, so it is lit unevenly: brighter towards its edge.
    """
    size = camera.size
    coordinates = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(coordinates, coordinates)
    nx, ny, c = camera.occluder
    depth = (nx * x + ny * y - c) / math.hypot(nx, ny)  # > 0 inside the body
    cover = np.clip(depth / 0.06 + 0.5, 0.0, 1.0)
    body = 55.0 + 60.0 * np.exp(-np.maximum(depth, 0.0) / 0.15)
    return radiance * (1.0 - cover) + body * cover


def headset_images(primitives, verts_mm, faces, settings, plan: HeadsetPlan,
                   full_rays: bool = False) -> dict[str, np.ndarray]:
    """Noise-free IR images [S,S] float 0..255 of every headset camera for one expression.

    The shading runs on the primitives' device; full_rays raymarches the five views there in one
    call (a GPU), else view by view with the CPU renderer (`ava.synth.render.render_images`)."""
    import torch

    from ava.synth.render import VOLRADIUS, View, render_images

    points = voxel_positions(primitives) * VOLRADIUS
    views = [View(camrot=torch.from_numpy(camera.camrot).float(), campos=torch.from_numpy(camera.campos).float(),
                  focal=torch.tensor([camera.focal, camera.focal]),
                  princpt=torch.tensor([camera.size / 2.0, camera.size / 2.0])) for camera in plan.cameras]
    shaded = [shaded_primitives(primitives, camera, plan.gain, points) for camera in plan.cameras]
    size = plan.cameras[0].size
    rayrgba = render_images(shaded, views, size, size, verts_mm, faces, settings, full_rays)
    images = {}
    for index, camera in enumerate(plan.cameras):
        radiance = rayrgba[index, ..., 0].numpy().astype(np.float64) + 2.0 * (1.0 - rayrgba[index, ..., 3].numpy())
        images[camera.name] = sensor_response(occluded_view(radiance, camera))
    return images


def sensor_response(linear: np.ndarray) -> np.ndarray:
    """Linear radiance -> pixel value 0..255 with a soft shoulder, 255 (1 - exp(-x/200)): close,
    bright skin compresses instead of clipping, as under an exposure control."""
    return 255.0 * (1.0 - np.exp(-np.maximum(linear, 0.0) / 200.0))


def sensor_readout(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [S,S]: shot noise (variance proportional to the signal), read noise, quantisation."""
    noisy = image + rng.normal(size=image.shape) * np.sqrt(1.5 + 0.05 * np.maximum(image, 0.0))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def headset_frames(clean: dict[str, np.ndarray], plan: HeadsetPlan, dome_frame: int) -> dict[int, dict[str, bytes]]:
    """{headset frame index: {camera: greyscale AVIF}} for the headset frames showing `dome_frame`,
    from its noise-free views (`headset_images`, rendered once per expression): each headset
    frame gets its own sensor noise."""
    from ava.data.formats import encode_avif

    frames = {}
    for index in np.nonzero(plan.dome_index == dome_frame)[0].tolist():
        rng = np.random.default_rng([*plan.noise_seed, index])
        frames[index] = {name: encode_avif(sensor_readout(image, rng)) for name, image in clean.items()}
    return frames


def truth_rows(plan: HeadsetPlan, dome_frames: list[tuple[str, str]], expressions: list[Expression]) -> list[dict]:
    """Per headset frame: segment, headset frame id, the dome frame id it shows, its expression."""
    rows = []
    for (segment, frame_id), dome in zip(plan.frames, plan.dome_index.tolist()):
        expression = expressions[dome]
        rows.append({"segment": segment, "frame_id": frame_id, "dome_frame_id": dome_frames[dome][1],
                     "expression": expression.as_dict()})
    return rows


def rig_description(plan: HeadsetPlan) -> dict:
    """The fitted rig (for the truth file: real headset captures come without a calibration)."""
    return {camera.name: {"position_mm": camera.campos.tolist(), "rotation": camera.camrot.tolist(),
                          "focal_px": camera.focal, "size": camera.size} for camera in plan.cameras}


class HeadsetWriter:
    """Writes one subject's headset session into its capture (through the capture's CaptureWriter):
    the encoder frame list at once, the images as frames arrive, the ground truth at the end."""

    def __init__(self, writer, plan: HeadsetPlan, dome_frames: list[tuple[str, str]],
                 expressions: list[Expression]) -> None:
        from ava.data.formats import format_frame_list

        self.writer, self.plan = writer, plan
        self.dome_frames, self.expressions = dome_frames, expressions
        self.pending: dict[int, dict[str, bytes]] = {}
        self.written = 0
        writer.write(writer.layout.encoder_frame_list, format_frame_list(plan.frames))

    def add(self, frames: dict[int, dict[str, bytes]]) -> None:
        """Headset frames rendered with one dome frame; written in frame-list order (dome frames
        arrive in order and the warp is monotone, so at most a few wait)."""
        from ava.data.formats import member_frame
        from ava.data.layout import encoder_member

        self.pending.update(frames)
        while self.written in self.pending:
            frame = member_frame(self.plan.frames[self.written][1])
            for camera, data in self.pending.pop(self.written).items():
                self.writer.add_member(self.writer.layout.encoder_zip(camera), encoder_member(camera, frame), data)
            self.written += 1

    def commit(self) -> None:
        from ava.data.encoder import format_encoder_truth, truth_path

        if self.written != len(self.plan.frames):
            raise RuntimeError(f"headset session incomplete: {self.written} of {len(self.plan.frames)} frames")
        rows = truth_rows(self.plan, self.dome_frames, self.expressions)
        document = format_encoder_truth(rows, rig_description(self.plan))
        self.writer.write(truth_path(self.writer.layout.root), document)
