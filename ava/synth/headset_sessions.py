"""Synthetic headset sessions: five near-infrared views from cameras mounted on the face.

The real Ava-256 release pairs each dome capture with a headset capture (a Quest Pro with five IR
cameras) recorded in a separate session from a similar script, so the two takes of a segment are
two performances: they differ in timing, length, amplitude, holds and hesitations, and no frame of
one matches a frame of the other. This module makes the synthetic equivalent, written in exactly
the release layout (`encoder/frame_list.csv`, `encoder/image/cam-*.zip`, docs/data-layout.md):

Performances. Each dome segment of n frames gets a headset take of its own: the segment's script
performed again with its own random amplitudes, holds and hesitations (`perform_take`), played at
its own tempo (0.5x to 1.9x as long as the dome take, with a strongly varying speed), between a
few rest frames before the cue (lead-in) and after it (lead-out), so neither end of a headset take
need coincide with the dome take's.

Cameras. In the head frame (head.py: +x to the subject's left, +y up, +z out of the face, mm), a
canonical rig of five pinhole cameras 30-60 mm from the skin: `cam-cyclop` (wide, below the
visor, looking down at nose, mouth and chin), one camera per eye at its temporal side, one per
mouth corner below the headset. The headset sits a little differently on every subject (one rigid
offset moves all five cameras together) and slips within the session: a slow drift of a fraction
of a millimetre and degree per second of recording, and now and then, between segments, a jump of
up to 1.5 mm and 1.5 degrees (the subject touched the headset). Each view sees only part of the
face, and part of some views is covered by the headset body (a soft-edged band per camera).

Appearance. Greyscale, lit only by an IR emitter at each camera: the rendered radiance of a
voxel is its IR albedo times a Lambert term for the light at the camera, times (d0/d)^2 for the
inverse-square falloff (d the distance to the camera, d0 the camera's working distance), times
the emitter's beam profile. The IR albedo is a compressed grey of the visible texture (skin of
every tone is much closer in the near infrared than in visible light; the mouth cavity and the
pupils stay dark) whose compression and level vary per subject (skin's NIR reflectance does).
The shading is baked per view into the templates of the subject's ground-truth primitives for the
headset frame's own expression, and raymarched with the dome's renderer (render.py). Then a sensor
response with a soft shoulder (bright skin close to the emitter compresses rather than clips),
sensor noise and 8-bit quantisation; images are stored as greyscale AVIF.

Truth. `encoder_truth.json` beside the capture (not part of the release layout) holds each headset
frame's expression vector and headset slip, the dome frames' expression vectors, the fitted rig and
the subject's IR reflectance; `TruthGeometry` rebuilds the subject's mesh and texture for any
expression vector, from which an evaluation derives the decoder's true code.
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
    """A rig camera as fitted on one subject at one frame, at the stored image size."""

    name: str
    camrot: np.ndarray  # [3,3] head -> camera (x right, y down, z forward)
    campos: np.ndarray  # [3] mm, head frame
    focal: float  # pixels
    size: int  # square images of size x size pixels
    occluder: np.ndarray  # [3] (nx, ny, c) in normalised image coordinates
    working_distance: float


# How a headset take differs from the dome take of the same segment (see the module docstring).
TEMPO = (0.5, 2.5)  # headset take length / dome take length, log-uniform
WARP_JITTER = 2.5  # log-normal spread of the take's local speed (monotone_warp)
# Each end of a take's recording: a fraction of the take cut (> 0) or added as rest frames (< 0),
# uniform in this range.
EDGE_RANGE = (-0.1, 0.35)
PERFORMANCE_OVERSAMPLING = 4  # the take is performed on a finer time grid, then played at its own speed
HEADSET_VARIATION = 1.5  # perform_segment's variation of a headset take (the dome takes use --expression-variation)
# Headset slip within a session: a random walk per frame and, between segments, sometimes a jump.
DRIFT_PER_FRAME = (math.radians(0.06), 0.06)  # (radians, mm) standard deviation of each frame's step
JUMP = (math.radians(1.5), 1.5)  # (radians, mm): largest jump
JUMP_PROBABILITY = 0.3
# The subject's IR reflectance: the albedo's compression exponent and level.
REFLECTANCE_EXPONENT = (0.45, 0.8)
REFLECTANCE_LEVEL = (0.8, 1.15)
_PIVOT = np.array([0.0, 0.0, 90.0])  # the headset pivots about the front of the face


@dataclass
class HeadsetPlan:
    """Everything random about one subject's headset session."""

    size: int
    fit_rotation: np.ndarray  # [3,3] how the headset sits on this subject (about _PIVOT)
    fit_translation: np.ndarray  # [3] mm
    occluder_shift: np.ndarray  # [5] per camera: where its view of the headset body begins
    slip: np.ndarray  # [M,6] per frame: rotation vector (radians) and translation (mm) on top of the fit
    frames: list[tuple[str, str]]  # (segment, headset frame id) in file order
    expressions: list[Expression]  # [M] the expression each headset frame shows
    task_of: np.ndarray  # int [M]: the dome frame whose synthesis task renders this headset frame
    gain: float  # the headset's IR exposure on this subject
    reflectance: tuple[float, float]  # (exponent, level) of the subject's IR albedo
    noise_seed: tuple[int, ...]

    def pose(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(rotation [3,3], translation [3] mm) of the rig at headset frame `index`: the fit, then the slip."""
        slip = self.slip[index]
        angle = float(np.linalg.norm(slip[:3]))
        rotation = rotation_about_axis(slip[:3], angle) if angle > 0 else np.eye(3)
        return rotation @ self.fit_rotation, rotation @ self.fit_translation + slip[3:]

    def cameras(self, index: int) -> list[HeadsetCamera]:
        """The five cameras at headset frame `index`."""
        rotation, translation = self.pose(index)
        cameras = []
        for number, camera in enumerate(RIG):
            position = rotation @ (np.array(camera.position) - _PIVOT) + _PIVOT + translation
            target = rotation @ (np.array(camera.target) - _PIVOT) + _PIVOT + translation
            camrot = look_at_rotation(position, target, rotation @ _UP)
            focal = (self.size / 2.0) / math.tan(math.radians(camera.fov_degrees) / 2.0)
            occluder = np.array(camera.occluder) + np.array([0.0, 0.0, self.occluder_shift[number]])
            cameras.append(HeadsetCamera(camera.name, camrot, position, focal, self.size, occluder,
                                         camera.working_distance))
        return cameras


def monotone_warp(dome_length: int, headset_length: int, rng: np.random.Generator, jitter: float = 1.0) -> np.ndarray:
    """int [headset_length]: non-decreasing indices from 0 to dome_length - 1.

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


def take_length(dome_length: int, rng: np.random.Generator) -> int:
    """Frames of the headset take's performance (without lead-in and lead-out): the dome take's
    length times a log-uniform tempo factor in TEMPO, at least two."""
    factor = math.exp(rng.uniform(math.log(TEMPO[0]), math.log(TEMPO[1])))
    return max(2, int(round(dome_length * factor)))


def _rotation_vector(rng: np.random.Generator, largest: float) -> np.ndarray:
    axis = rng.normal(size=3)
    return axis / np.linalg.norm(axis) * rng.uniform(0.0, largest)


def session_slip(frames: list[tuple[str, str]], rng: np.random.Generator) -> np.ndarray:
    """[M,6] the headset's slip at every frame (rotation vector in radians, translation in mm):
    a random walk from zero, plus sometimes a jump where a new segment begins."""
    steps = np.zeros((len(frames), 6))
    steps[1:, :3] = rng.normal(scale=DRIFT_PER_FRAME[0], size=(len(frames) - 1, 3))
    steps[1:, 3:] = rng.normal(scale=DRIFT_PER_FRAME[1], size=(len(frames) - 1, 3))
    for index in range(1, len(frames)):
        if frames[index][0] != frames[index - 1][0] and rng.uniform() < JUMP_PROBABILITY:
            steps[index, :3] += _rotation_vector(rng, JUMP[0])
            steps[index, 3:] += rng.uniform(-JUMP[1], JUMP[1], 3)
    # Small rotation vectors compose about additively.
    return np.cumsum(steps, axis=0)


def plan_takes(dome_frames: list[tuple[str, str]], rng: np.random.Generator) -> tuple[list[tuple[str, str]], list[Expression]]:
    """The headset session's frames (segment, frame id) and each frame's expression.

    Per segment of the dome session: a take of its own (`perform_take`) at its own tempo and with
    a strongly varying speed (`monotone_warp`), whose recording starts and stops independently of
    the performance: each end either adds rest frames (the recording began before the cue, or went
    on after the face came to rest) or cuts the performance (it began late, or stopped early), by
    a fraction of the take drawn from EDGE_RANGE.
    """
    segments: dict[str, int] = {}
    for segment, _ in dome_frames:
        segments[segment] = segments.get(segment, 0) + 1
    frames: list[tuple[str, str]] = []
    expressions: list[Expression] = []
    number = int(rng.integers(100, 20000))
    for segment, length in segments.items():
        core = take_length(length, rng)
        dense = perform_take(segment, PERFORMANCE_OVERSAMPLING * core, rng)
        edges = rng.uniform(*EDGE_RANGE, 2)  # > 0: cut this fraction; < 0: add rest frames
        first = int(round(max(edges[0], 0.0) * len(dense)))
        last = len(dense) - int(round(max(edges[1], 0.0) * len(dense)))
        recorded = dense[first:max(last, first + 2)]
        shown = max(2, int(round(core * len(recorded) / len(dense))))
        take = [recorded[index] for index in monotone_warp(len(recorded), shown, rng, jitter=WARP_JITTER)]
        lead_in, lead_out = (int(round(max(-edge, 0.0) * core)) for edge in edges)
        for expression in [rest_expression()] * lead_in + take + [rest_expression()] * lead_out:
            frames.append((segment, str(number)))
            expressions.append(expression)
            number += 1
        number += int(rng.integers(3, 40))  # the headset recording also skips between segments
    return frames, expressions


def plan_headset(dome_frames: list[tuple[str, str]], size: int, rng: np.random.Generator,
                 noise_seed: tuple[int, ...]) -> HeadsetPlan:
    """The headset session of a subject whose dome session has `dome_frames` (segment, frame id)."""
    fit_rotation = rotation_about_axis(rng.normal(size=3), math.radians(rng.uniform(0.0, 3.0)))
    fit_translation = rng.uniform(-3.0, 3.0, 3)
    occluder_shift = rng.uniform(-0.05, 0.05, len(RIG))
    frames, expressions = plan_takes(dome_frames, rng)
    slip = session_slip(frames, rng)
    # Headset frames are rendered in the dome frames' tasks, spread evenly and in order (so they
    # arrive in frame-list order).
    task_of = (np.arange(len(frames)) * len(dome_frames)) // max(len(frames), 1)
    reflectance = (float(rng.uniform(*REFLECTANCE_EXPONENT)), float(rng.uniform(*REFLECTANCE_LEVEL)))
    return HeadsetPlan(size, fit_rotation, fit_translation, occluder_shift, slip, frames, expressions,
                       task_of.astype(np.int64), float(rng.uniform(0.85, 1.15)), reflectance, noise_seed)


# --- performances ---------------------------------------------------------------------------------


def rest_expression() -> Expression:
    """The face before the cue and after the segment: at rest."""
    return Expression()


def perform_take(segment: str, count: int, rng: np.random.Generator) -> list[Expression]:
    """`count` frames of one performance of `segment` (ava.synth.expressions.perform_segment: its
    own amplitudes, ramps, holds, hesitations, blinks and gaze drift)."""
    from ava.synth.expressions import perform_segment

    return perform_segment(segment, count, rng, variation=HEADSET_VARIATION)


# --- rendering (in the frame workers) -----------------------------------------------------------


def infrared_albedo(rgb, exponent: float = 0.6, level: float = 1.0):
    """Near-infrared reflectance from visible RGB 0..255 (torch or numpy, channels last).

    Skin reflects NIR strongly whatever its visible tone, so the grey is compressed (grey^exponent,
    exponent < 1) and weighted towards red; dark regions (mouth cavity, pupils, dark hair) stay
    dark. `exponent` and `level` (a factor) vary per subject (REFLECTANCE_EXPONENT, REFLECTANCE_LEVEL).
    """
    grey = (0.6 * rgb[..., 0] + 0.3 * rgb[..., 1] + 0.1 * rgb[..., 2]) / 255.0
    return level * grey.clip(0.0, 1.0) ** exponent


def voxel_positions(primitives):
    """[K,D,D,D,3] head-frame positions (volume units) of every template voxel (align_corners)."""
    import torch

    voxels = primitives.template.shape[1]
    axis = torch.linspace(-1.0, 1.0, voxels, device=primitives.template.device)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")  # template axes are (z, y, x)
    local = torch.stack([x, y, z], dim=-1)  # [D,D,D,3]
    scaled = local[None] / primitives.primscale[:, None, None, None, :]  # [K,D,D,D,3]
    return primitives.primpos[:, None, None, None, :] + torch.einsum("kij,kdhwj->kdhwi", primitives.primrot, scaled)


def shaded_primitives(primitives, camera: HeadsetCamera, gain: float, points, reflectance: tuple[float, float] = (0.6, 1.0)):
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
    radiance = infrared_albedo(primitives.template[..., :3], *reflectance) * (0.15 + 0.85 * lambert) * falloff * beam
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


def headset_images(primitives, verts_mm, faces, settings, plan: HeadsetPlan, index: int,
                   full_rays: bool = False) -> dict[str, np.ndarray]:
    """Noise-free IR images [S,S] float 0..255 of every headset camera at headset frame `index`
    (its rig pose, the subject's IR reflectance) of the face `primitives` show.

    The shading runs on the primitives' device; full_rays raymarches the five views there in one
    call (a GPU), else view by view with the CPU renderer (`ava.synth.render.render_images`)."""
    import torch

    from ava.synth.render import VOLRADIUS, View, render_images

    points = voxel_positions(primitives) * VOLRADIUS
    cameras = plan.cameras(index)
    views = [View(camrot=torch.from_numpy(camera.camrot).float(), campos=torch.from_numpy(camera.campos).float(),
                  focal=torch.tensor([camera.focal, camera.focal]),
                  princpt=torch.tensor([camera.size / 2.0, camera.size / 2.0])) for camera in cameras]
    shaded = [shaded_primitives(primitives, camera, plan.gain, points, plan.reflectance) for camera in cameras]
    size = cameras[0].size
    rayrgba = render_images(shaded, views, size, size, verts_mm, faces, settings, full_rays)
    images = {}
    for view_index, camera in enumerate(cameras):
        radiance = (rayrgba[view_index, ..., 0].numpy().astype(np.float64)
                    + 2.0 * (1.0 - rayrgba[view_index, ..., 3].numpy()))
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


def ground_truth_primitives(surface, uvmaps, angles, identity, expression: Expression, settings):
    """(primitives, closed mesh vertices [V',3] mm, faces) of `identity` making `expression`: what
    the dome frames are rendered from, for a headset frame's own expression. On the CPU."""
    import torch

    from ava.synth.appearance import paint_texture
    from ava.synth.render import build_primitives

    vertices = surface.vertices(identity, expression)
    texture = paint_texture(identity, expression, *angles)
    closed_vertices, closed_faces = surface.closed_mesh(vertices)
    verts_mm, faces = torch.from_numpy(closed_vertices), torch.from_numpy(closed_faces)
    return build_primitives(verts_mm, texture, uvmaps, settings, faces), verts_mm, faces


def clean_headset_frames(surface, uvmaps, angles, identity, settings, plan: HeadsetPlan, dome_frame: int,
                         device="cpu", full_rays: bool = False) -> dict[int, dict[str, np.ndarray]]:
    """{headset frame index: {camera: noise-free IR image [S,S]}} for the headset frames that the
    synthesis task of dome frame `dome_frame` renders (`plan.task_of`), each with its own
    expression and headset pose. surface, uvmaps, angles: the head surface, its UV maps and every
    texel's angles (as the dome frames use them). The primitives are built on the CPU and
    raymarched on `device` (`headset_images`)."""
    clean = {}
    for index in np.nonzero(plan.task_of == dome_frame)[0].tolist():
        primitives, verts_mm, faces = ground_truth_primitives(surface, uvmaps, angles, identity,
                                                              plan.expressions[index], settings)
        clean[index] = headset_images(primitives.to(device), verts_mm, faces, settings, plan, index, full_rays)
    return clean


def headset_frames(clean: dict[int, dict[str, np.ndarray]], plan: HeadsetPlan) -> dict[int, dict[str, bytes]]:
    """{headset frame index: {camera: greyscale AVIF}} from `clean_headset_frames`' noise-free
    views, each headset frame with its own sensor noise."""
    from ava.data.formats import encode_avif

    frames = {}
    for index, images in clean.items():
        with_noise = np.random.default_rng([*plan.noise_seed, index])
        frames[index] = {name: encode_avif(sensor_readout(image, with_noise)) for name, image in images.items()}
    return frames


def truth_document(plan: HeadsetPlan, dome_frames: list[tuple[str, str]], dome_expressions: list[Expression]) -> dict:
    """What `encoder_truth.json` holds (see ava.data.headset_capture.format_encoder_truth)."""
    from ava.synth.expressions import CONTROLS

    frames = [{"segment": segment, "frame_id": frame_id, "expression": expression.as_dict(),
               "slip": {"rotation_deg": np.degrees(slip[:3]).round(6).tolist(), "translation_mm": slip[3:].round(6).tolist()}}
              for (segment, frame_id), expression, slip in zip(plan.frames, plan.expressions, plan.slip)]
    dome = [{"segment": segment, "frame_id": frame_id, "expression": expression.as_dict()}
            for (segment, frame_id), expression in zip(dome_frames, dome_expressions)]
    return {"controls": list(CONTROLS), "frames": frames, "dome_frames": dome, "rig": rig_description(plan),
            "infrared": {"gain": plan.gain, "albedo_exponent": plan.reflectance[0], "albedo_level": plan.reflectance[1]}}


def rig_description(plan: HeadsetPlan) -> dict:
    """The rig as fitted at the session's start (real headset captures come without a calibration)."""
    return {camera.name: {"position_mm": camera.campos.tolist(), "rotation": camera.camrot.tolist(),
                          "focal_px": camera.focal, "size": camera.size} for camera in plan.cameras(0)}


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
        """Headset frames rendered by one dome frame's task; written in frame-list order."""
        from ava.data.formats import member_frame
        from ava.data.layout import encoder_member

        self.pending.update(frames)
        while self.written in self.pending:
            frame = member_frame(self.plan.frames[self.written][1])
            for camera, data in self.pending.pop(self.written).items():
                self.writer.add_member(self.writer.layout.encoder_zip(camera), encoder_member(camera, frame), data)
            self.written += 1

    def commit(self) -> None:
        from ava.data.headset_capture import format_encoder_truth, truth_path

        if self.written != len(self.plan.frames):
            raise RuntimeError(f"headset session incomplete: {self.written} of {len(self.plan.frames)} frames")
        document = format_encoder_truth(truth_document(self.plan, self.dome_frames, self.expressions))
        self.writer.write(truth_path(self.writer.layout.root), document)


class TruthGeometry:
    """The ground-truth mesh and texture of any subject of a synthetic dataset making any expression.

    dataset_dir: a folder written by `ava synth`; each capture's `synth_truth.json` holds its
    identity and head surface (ava.synth.truth). `mesh_and_texture(folder, values, texture_size)`
    -> (f32 [V,3] head-frame mesh in mm, uint8 [T,T,3] texture painted at `texture_size`, default
    the capture's own); `values` maps control names to values (controls not named are at rest).
    `texture_size(folder)` is the capture's stored texture side. Raises UserError for a capture
    without its synthetic truth.
    """

    def __init__(self, dataset_dir) -> None:
        from pathlib import Path

        self.dataset_dir = Path(dataset_dir)
        self._truths: dict = {}
        self._geometries: dict = {}

    def _truth(self, folder: str):
        from ava.synth.truth import read_synth_truth

        if folder not in self._truths:
            self._truths[folder] = read_synth_truth(self.dataset_dir / folder)
        return self._truths[folder]

    def texture_size(self, folder: str) -> int:
        return int(self._truth(folder).texture_size)

    def mesh_and_texture(self, folder: str, values: dict[str, float],
                         texture_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        truth = self._truth(folder)
        key = (folder, texture_size or truth.texture_size)
        if key not in self._geometries:
            self._geometries[key] = truth.ground_truth(texture_size)
        geometry = self._geometries[key]
        expression = Expression.from_dict(values)
        return geometry.vertices(truth.identity, expression), geometry.texture(truth.identity, expression)
