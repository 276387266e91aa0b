"""`ava synth`: synthetic captures in the real on-disk layout (docs/data-layout.md), rendered with ava.kernels.

Per subject: a head (surface.py: the procedural head of head.py, or a face topology's template,
template.py) with its own shape and look (head.Identity), cameras of the fixed dome (dome.py), a
frame list of scripted expression segments starting with EXP_neutral_peak, each a take of its
script (expressions.py), smooth head motion, per-frame meshes (PLY), textures (AVIF), head poses,
camera images (AVIF, rendered with render.py over a per-camera background), the mean mesh/texture
and their variances, optionally 3D keypoints, the headset session with its ground truth
(headset_sessions.py) and the capture's own truth (truth.py: identity and per-frame expression vectors).
Next to the captures: the ids CSV, the topology OBJ and a manifest of the settings, written last,
which marks the dataset complete. A capture folder appears by rename once complete, and its truth
file carries the settings' digest, so a rerun after an interruption skips the captures already
made with the same settings and redoes the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ava.data import layout as names
from ava.data.calibration import Camera, calibration_document, camera_in_head_frame
from ava.data.formats import (
    encode_avif,
    encode_png,
    format_frame_list,
    format_head_pose,
    format_npy,
    format_ply_vertices,
    member_frame,
)
from ava.data.ids import CaptureId, format_ids_csv
from ava.synth.config import (
    IDS_FILENAME,
    MANIFEST_FILENAME,
    RUN_ONLY_FIELDS,
    SYNTH_FORMAT_VERSION,
    TOPOLOGY_FILENAME,
    SynthConfig,
)
from ava.synth.extras import foreground_masks, write_backgrounds, write_foreground_masks
from ava.synth.dome import base_head_pose, capture_cameras, head_motion, select_cameras
from ava.synth.expressions import Expression, perform_segment, segment_lengths
from ava.synth.head import Identity
from ava.synth.headset_sessions import HeadsetPlan, HeadsetWriter, clean_headset_frames, headset_frames, plan_headset
from ava.synth.surface import HeadSurface, topology_digest
from ava.synth.truth import TRUTH_FILENAME, completed_with, surface_and_maps, truth_document
from ava.synth.writer import CaptureWriter
from ava.errors import UserError
from ava.files import write_atomically

MAX_KEYPOINTS = 68


@dataclass
class SubjectPlan:
    """Everything random about one subject, drawn up front so frames can render in any process."""

    capture: CaptureId
    identity: Identity
    cameras: list[Camera]
    backgrounds: np.ndarray  # [C,2,3] top and bottom colour of each camera's backdrop
    frames: list[tuple[str, str]]  # (segment, frame id) in file order
    expressions: list[Expression]
    poses: np.ndarray  # [F,3,4] head -> world
    headset: HeadsetPlan | None = None  # the headset session (None: --no-headset)


@dataclass
class FrameTask:
    subject: int
    frame: int
    plan: SubjectPlan
    config: SynthConfig
    threads: int = 1  # torch's CPU threads while rendering it
    device: str = "cpu"  # where it is raymarched (render_device: "cpu" or "cuda:N")


@dataclass
class FrameResult:
    subject: int
    frame: int
    vertices: np.ndarray  # f32 [V,3]
    texture: np.ndarray  # u8 [S,S,3]
    texture_avif: bytes
    images: dict[str, bytes]  # camera id -> AVIF
    headset: dict = field(default_factory=dict)  # headset frame index -> {camera: AVIF}
    masks: dict = field(default_factory=dict)  # camera id -> AVIF foreground mask (the render's alpha)


def _capture_ids(count: int, rng: np.random.Generator) -> list[CaptureId]:
    """Distinct subjects with plausible dates and times, sorted by sid like 256_ids.csv."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    sids: set[str] = set()
    while len(sids) < count:
        sids.add("".join(rng.choice(list(letters), 3)) + f"{int(rng.integers(0, 1000)):03d}")
    captures = []
    for sid in sorted(sids):
        day = int(rng.integers(0, 365))
        date = np.datetime64("2026-01-01") + np.timedelta64(day, "D")
        mct = f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}"
        captures.append(CaptureId(mcd=str(date).replace("-", ""), mct=mct, sid=sid))
    return captures


def plan_subjects(config: SynthConfig) -> list[SubjectPlan]:
    """Draws every subject's identity, cameras, frames, expressions and motion from the seed."""
    captures = _capture_ids(config.n_ids, np.random.default_rng([config.seed, 0]))
    dome = select_cameras(config.n_cams)
    plans = []
    for index, capture in enumerate(captures):
        rng = np.random.default_rng([config.seed, 1, index])
        identity = Identity.sample(rng, variation=config.identity_variation)
        base = base_head_pose(rng)
        cameras = capture_cameras(dome, rng)
        greys = rng.uniform(60, 190, (len(cameras), 1, 1))
        backgrounds = np.clip(greys + rng.uniform(-25, 25, (len(cameras), 2, 3)), 0, 255)
        frames, expressions = [], []
        frame_number = int(rng.integers(1000, 40000))
        for segment, length in segment_lengths(config.n_frames).items():
            expressions += perform_segment(segment, length, rng, variation=config.expression_variation)
            for _ in range(length):
                frames.append((segment, str(frame_number)))
                frame_number += 1
            frame_number += int(rng.integers(5, 50))  # captures skip frames between segments
        plans.append(SubjectPlan(capture, identity, cameras, backgrounds, frames, expressions,
                                 head_motion(base, config.n_frames, rng)))
        if config.headset:  # its own random stream: the dome files do not depend on this switch
            plans[-1].headset = plan_headset(frames, config.headset_size, np.random.default_rng([config.seed, 3, index]),
                                             (config.seed, 4, index))
    return plans


# --- work done per frame (in worker processes) -------------------------------------------------

def _surface_and_maps(config: SynthConfig):
    """(head surface, its UV maps at the texture size, every texel's angles), once per process."""
    return surface_and_maps(config.topology, config.mesh_columns, config.mesh_rows, config.texture_size)


def _background(colours: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H,W,3] a soft vertical gradient between the two colours, slightly darker at the sides."""
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    columns = np.linspace(-1.0, 1.0, width)[None, :, None]
    gradient = colours[0] * (1 - rows) + colours[1] * rows
    return gradient * (1.0 - 0.12 * columns**2)


def render_frame(task: FrameTask) -> FrameResult:
    """Mesh, texture and every camera's image of one frame."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(task.threads)
    try:
        return _render_frame(task)
    finally:
        torch.set_num_threads(previous)  # matters when frames are rendered in the calling process


def _render_frame(task: FrameTask) -> FrameResult:
    from ava.synth.appearance import paint_texture

    config, plan = task.config, task.plan
    surface, uvmaps, angles = _surface_and_maps(config)
    expression = plan.expressions[task.frame]
    vertices = surface.vertices(plan.identity, expression)
    texture = paint_texture(plan.identity, expression, *angles)
    rayrgba, clean_headset = raymarch_frame(task, surface, uvmaps, angles, vertices, texture)
    headset = headset_frames(clean_headset, plan.headset) if clean_headset else {}
    height, width = rayrgba.shape[1:3]
    images = {}
    for index, camera in enumerate(plan.cameras):
        rgba = rayrgba[index].numpy().astype(np.float64)
        pixels = rgba[..., :3] + (1.0 - rgba[..., 3:]) * _background(plan.backgrounds[index], height, width)
        images[camera.camera_id] = encode_avif(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    masks = foreground_masks({camera.camera_id: rayrgba[index, ..., 3].numpy() for index, camera in enumerate(plan.cameras)})
    return FrameResult(task.subject, task.frame, vertices, texture, encode_avif(texture), images, headset, masks)


def raymarch_frame(task: FrameTask, surface: HeadSurface, uvmaps, angles, vertices: np.ndarray,
                   texture: np.ndarray, full_rays: bool | None = None):
    """(rayrgba [C,H,W,4] on the CPU of the frame's dome cameras, {headset frame index: {camera:
    noise-free IR image [S,S]}} of the headset frames this frame's task renders, each with its own
    expression and rig pose: `ava.synth.headset_sessions.clean_headset_frames`) for the head `vertices`
    [V,3] painted with `texture` [S,S,3]; `angles`: every texel's angles (`_surface_and_maps`).

    The primitives are built on the CPU (so both devices march the same ones) and moved to
    `task.device`. full_rays (default: on a GPU) raymarches every full ray against every
    primitive there, one call for the dome cameras and one for the headset's; otherwise the CPU
    renderer's restrictions save work. Both give the same pixels up to float rounding."""
    import torch

    from ava.synth.render import RenderSettings, View, build_primitives, render_images

    config, plan = task.config, task.plan
    device = torch.device(task.device)
    full_rays = device.type != "cpu" if full_rays is None else full_rays
    if not full_rays and device.type != "cpu":
        raise ValueError("the restricted renderer (full_rays=False) runs on the CPU only")
    settings = RenderSettings(prims_per_side=config.prims_per_side, voxels=config.voxels)
    closed_vertices, closed_faces = surface.closed_mesh(vertices)
    verts_mm, faces = torch.from_numpy(closed_vertices), torch.from_numpy(closed_faces)
    primitives = build_primitives(verts_mm, texture, uvmaps, settings, faces).to(device)
    pose = plan.poses[task.frame]
    views = []
    for camera in plan.cameras:
        camrot, campos = camera_in_head_frame(camera, pose)
        views.append(View(
            camrot=torch.from_numpy(camrot).float(),
            campos=torch.from_numpy(campos).float(),
            focal=torch.from_numpy(camera.focal / config.downsample).float(),
            princpt=torch.from_numpy(camera.principal_point / config.downsample).float(),
        ))
    height = plan.cameras[0].height // config.downsample
    width = plan.cameras[0].width // config.downsample
    with torch.no_grad():
        rayrgba = render_images(primitives, views, height, width, verts_mm, faces, settings, full_rays)
        headset = (clean_headset_frames(surface, uvmaps, angles, plan.identity, settings, plan.headset, task.frame,
                                        device, full_rays) if plan.headset is not None else {})
    return rayrgba, headset


# --- orchestration -----------------------------------------------------------------------------


def _keypoint_vertices(surface: HeadSurface) -> np.ndarray:
    """Up to 68 vertex ids spread over the face, used as the synthetic keypoints."""
    theta, phi = surface.theta, surface.phi
    face = np.nonzero((np.cos(phi) > 0.4) & (theta > 0.3 * np.pi) & (theta < 0.68 * np.pi) & surface.used)[0]
    return face[np.linspace(0, len(face) - 1, min(MAX_KEYPOINTS, len(face))).astype(int)]


def _keypoints(vertices: np.ndarray, pose: np.ndarray, chosen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[K,6] rows of keypoint id, world x, y, z, summed confidence, inlier count (docs/data-layout.md)."""
    world = vertices[chosen].astype(np.float64) @ pose[:, :3].T + pose[:, 3]
    inliers = rng.integers(3, 20, len(chosen)).astype(np.float64)
    confidence = inliers * rng.uniform(0.5, 1.0, len(chosen))
    rows = np.concatenate([np.arange(len(chosen))[:, None], world, confidence[:, None], inliers[:, None]], axis=1)
    return rows.astype(np.float32)


class _CaptureAssembly:
    """Accumulates one subject's frames into its CaptureWriter, then writes the means and variances."""

    def __init__(self, root: Path, plan: SubjectPlan, config: SynthConfig, keypoint_ids: np.ndarray,
                 subject: int, settings_sha256: str) -> None:
        self.plan, self.config, self.keypoint_ids = plan, config, keypoint_ids
        self.settings_sha256 = settings_sha256
        self.writer = CaptureWriter(root)
        layout = self.writer.layout
        self.writer.write_json(layout.calibration, calibration_document(plan.cameras))
        self.writer.write(layout.frame_list, format_frame_list(plan.frames))
        self.vertex_sum = self.vertex_square = self.texture_sum = self.texture_square = None
        self.rng = np.random.default_rng([config.seed, 2, subject])
        self.headset = HeadsetWriter(self.writer, plan.headset, plan.frames, plan.expressions) if plan.headset else None
        height, width = plan.cameras[0].height // config.downsample, plan.cameras[0].width // config.downsample
        write_backgrounds(self.writer, {camera.camera_id: _background(plan.backgrounds[index], height, width)
                                        for index, camera in enumerate(plan.cameras)})

    def add(self, result: FrameResult) -> None:
        layout, writer = self.writer.layout, self.writer
        frame = member_frame(self.plan.frames[result.frame][1])
        pose = self.plan.poses[result.frame]
        writer.add_member(layout.vertices_zip, names.vertices_member(frame), format_ply_vertices(result.vertices))
        writer.add_member(layout.head_pose_zip, names.head_pose_member(frame), format_head_pose(pose))
        writer.add_member(layout.texture_zip, names.texture_member(frame), result.texture_avif)
        for camera_id, data in result.images.items():
            writer.add_member(layout.image_zip(camera_id), names.image_member(camera_id, frame), data)
        write_foreground_masks(writer, frame, result.masks)
        if self.headset is not None:
            self.headset.add(result.headset)
        if self.config.keypoints:
            rows = _keypoints(result.vertices, pose, self.keypoint_ids, self.rng)
            writer.add_member(layout.keypoints_zip, names.keypoints_member(frame), format_npy(rows))
        vertices = result.vertices.astype(np.float64)
        texture = result.texture.astype(np.float64)
        if self.vertex_sum is None:
            self.vertex_sum, self.vertex_square = np.zeros_like(vertices), np.zeros_like(vertices)
            self.texture_sum, self.texture_square = np.zeros_like(texture), np.zeros_like(texture)
        self.vertex_sum += vertices
        self.vertex_square += vertices**2
        self.texture_sum += texture
        self.texture_square += texture**2

    def commit(self) -> Path:
        """Means, and variances of the frames about the per-element mean (one scalar each)."""
        count = len(self.plan.frames)
        layout = self.writer.layout
        vertex_mean = self.vertex_sum / count
        texture_mean = self.texture_sum / count
        vertex_variance = float(np.mean(self.vertex_square / count - vertex_mean**2).clip(min=0))
        texture_variance = float(np.mean(self.texture_square / count - texture_mean**2).clip(min=0))
        self.writer.write(layout.vertices_mean, format_npy(vertex_mean.astype(np.float32)))
        self.writer.write(layout.vertices_variance, f"{vertex_variance:.9g}\n")
        self.writer.write(layout.texture_mean, encode_png(np.clip(np.rint(texture_mean), 0, 255).astype(np.uint8)))
        self.writer.write(layout.texture_variance, f"{texture_variance:.9g}\n")
        if self.headset is not None:
            self.headset.commit()
        config = self.config
        self.writer.write(self.writer.layout.root / TRUTH_FILENAME, truth_document(
            self.plan.identity, self.plan.frames, self.plan.expressions, topology=config.topology,
            mesh_columns=config.mesh_columns, mesh_rows=config.mesh_rows, texture_size=config.texture_size,
            settings_sha256=self.settings_sha256))
        return self.writer.commit()


def read_manifest(output_dir: Path) -> dict | None:
    path = Path(output_dir) / MANIFEST_FILENAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _manifest(config: SynthConfig, captures: list[CaptureId]) -> dict:
    settings = {key: value for key, value in asdict(config).items() if key not in RUN_ONLY_FIELDS}
    return {"format_version": SYNTH_FORMAT_VERSION, "config": settings, "topology_sha256": topology_digest(config.topology),
            "captures": [c.folder for c in captures]}


def settings_digest(config: SynthConfig) -> str:
    """SHA-256 of everything that decides the files (format version, settings, topology): a
    capture's truth file carries it, so a rerun knows the capture was made with these settings."""
    manifest = _manifest(config, [])
    del manifest["captures"]
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def is_generated(output_dir: str | Path, config: SynthConfig) -> bool:
    """True when `output_dir` already holds a complete dataset generated with these settings."""
    manifest = read_manifest(Path(output_dir))
    if manifest is None:
        return False
    expected = _manifest(config, [])
    if any(manifest.get(key) != expected[key] for key in ("format_version", "config", "topology_sha256")):
        return False
    return all((Path(output_dir) / folder).is_dir() for folder in manifest.get("captures", []))


def render_device(choice: str) -> str:
    """Where frames are raymarched for --device `choice` (auto, cpu or cuda): "cpu", or "cuda:N"
    (torch's current GPU, so that worker processes use the caller's). UserError for cuda
    without a GPU."""
    import torch

    if choice not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {choice!r}")
    if choice == "cpu" or not torch.cuda.is_available():
        if choice == "cuda":
            raise UserError("--device cuda: torch sees no CUDA GPU on this machine; "
                            "use --device cpu (or auto), or install a CUDA build of torch")
        return "cpu"
    return f"cuda:{torch.cuda.current_device()}"


def worker_count(config: SynthConfig, device: str | None = None) -> int:
    """Processes that render frames: --workers, else every CPU core, at most 8 on the CPU and 16
    when frames are raymarched on a GPU (`device`, default render_device(config.device)): there
    the processes only paint textures and encode images, so more of them pay."""
    if config.workers:
        return config.workers
    device = render_device(config.device) if device is None else device
    return min(os.cpu_count() or 1, 8 if device == "cpu" else 16)


def _left_by_interrupted_run(output_dir: Path, config: SynthConfig) -> bool:
    """True when `output_dir` holds only what generate() with `config` writes before its manifest:
    some of its capture folders (each complete: they appear by rename), their hidden `.partial`
    folders, the topology and the ids list. A rerun then starts over (the output is the same)."""
    folders = {plan.capture.folder for plan in plan_subjects(config)}
    expected = folders | {f".{folder}.partial" for folder in folders} | {TOPOLOGY_FILENAME, IDS_FILENAME}
    return all(entry.name in expected for entry in output_dir.iterdir())


def generate(output_dir: str | Path, config: SynthConfig, progress: bool = True, threads: int = 1) -> list[CaptureId]:
    """Writes the synthetic dataset into `output_dir`; returns the capture ids (the ids CSV order).
    Frames are rendered by `worker_count(config)` processes using `threads` torch threads each,
    raymarching on `render_device(config.device)`."""
    config.check()
    device = render_device(config.device)
    surface, _, _ = _surface_and_maps(config)  # fetches and checks the topology before any other work
    output_dir = Path(output_dir)
    manifest = read_manifest(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not config.overwrite:
        if manifest is None:
            if not _left_by_interrupted_run(output_dir, config):
                raise UserError(f"{output_dir} is not empty and holds no synthetic dataset; choose another -o or pass --overwrite")
        elif not is_generated(output_dir, config):
            raise UserError(f"{output_dir} holds a synthetic dataset made with other settings; pass --overwrite to replace it")
    output_dir.mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        (output_dir / MANIFEST_FILENAME).unlink(missing_ok=True)  # incomplete until rewritten at the end
    plans = plan_subjects(config)
    keypoint_ids = _keypoint_vertices(surface)
    digest = settings_digest(config)
    # Captures an interrupted run finished with the same settings stay (--overwrite redoes them).
    pending = [s for s, plan in enumerate(plans)
               if config.overwrite or not completed_with(output_dir / plan.capture.folder, digest)]
    tasks = [FrameTask(s, f, plans[s], config, threads, device) for s in pending for f in range(len(plans[s].frames))]
    workers = max(1, min(worker_count(config, device), len(tasks)))

    with _progress_bar(progress) as bar:
        images = sum(len(plans[s].cameras) * len(plans[s].frames) for s in pending)
        job = bar.add_task(f"rendering {_captures(len(pending))}", total=images) if bar else None
        assembly = None
        try:
            with _executor(workers if tasks else 1) as pool:
                results = pool.map(render_frame, tasks, chunksize=1) if pool else map(render_frame, tasks)
                for result in results:
                    plan = plans[result.subject]
                    if assembly is None or assembly.plan is not plan:
                        if assembly is not None:
                            assembly.commit()
                        assembly = _CaptureAssembly(output_dir / plan.capture.folder, plan, config, keypoint_ids,
                                                    result.subject, digest)
                    assembly.add(result)
                    if bar:
                        bar.update(job, advance=len(plan.cameras), description=f"rendering capture "
                                   f"{pending.index(result.subject) + 1} of {len(pending)} ({plan.capture.folder})")
            if assembly is not None:
                assembly.commit()
            if bar:
                bar.update(job, description=f"rendered {_captures(len(pending))}")  # the line a log file keeps
        except BaseException:
            if assembly is not None:
                assembly.writer.abort()  # completed captures stay; the manifest is not written
            raise

    captures = [plan.capture for plan in plans]
    mean_shape = np.mean([surface.vertices(p.identity, Expression()) for p in plans], axis=0, dtype=np.float64)
    write_atomically(output_dir / TOPOLOGY_FILENAME, surface.obj_bytes(mean_shape))
    write_atomically(output_dir / IDS_FILENAME, format_ids_csv(captures).encode())
    write_atomically(output_dir / MANIFEST_FILENAME, json.dumps(_manifest(config, captures), indent=1).encode())
    return captures


def ensure_generated(output_dir: str | Path, config: SynthConfig | None = None, progress: bool = True) -> Path:
    """Generates the dataset unless `output_dir` already holds it (for `ava train`'s default data)."""
    config = config or SynthConfig()
    if not is_generated(output_dir, config):
        generate(output_dir, config, progress=progress)
    return Path(output_dir)


class _executor:
    """A spawn-based process pool, or None for a single worker. Never fork: a forked child of a
    process that has used torch's threads can deadlock, and one that uses CUDA fails ("Cannot
    re-initialize CUDA in forked subprocess"); with --device cuda each spawned worker opens its own
    small CUDA context on the parent's GPU."""

    def __init__(self, workers: int) -> None:
        self.pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else None

    def __enter__(self):
        return self.pool

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _captures(count: int) -> str:
    return f"{count} capture" + ("" if count == 1 else "s")


class _progress_bar:
    def __init__(self, enabled: bool) -> None:
        self.progress = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            from ava.console import make_console

            # On stderr with every other message: stdout stays free for what a caller pipes on.
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("images"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=make_console())

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
        return self.progress

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

