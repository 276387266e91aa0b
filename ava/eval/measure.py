"""Which images `ava eval` measures, and measuring one checkpoint on them.

The metric code is `ava.runtime.metrics`, the same as training's held-out PSNR: per camera a
background plate is fitted to one frame (the first usable one, never measured), the other frames
are rendered and composited over that plate (`psnr`, `ssim`, `lpips`), over the model's own
background row (`psnr_model_bg`), and measured inside the tracked mesh's silhouette
(`psnr_head`, `ssim_head`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ava.errors import UserError
from ava.runtime.metrics import SquaredErrors, spread


@dataclass(frozen=True)
class CameraPlan:
    """The frames of one (identity, camera) pair: one to fit the plate, the others to measure."""

    identity: str  # capture folder MCD--MCT--SID
    camera: str
    plate_frame: str
    frames: tuple[str, ...]
    segments: tuple[str, ...]  # segment of each measured frame


@dataclass
class ViewResult:
    """The measurements of one image under one checkpoint."""

    identity: str
    camera: str
    frame: str
    segment: str
    errors: SquaredErrors
    ssim: float
    ssim_head: float | None
    lpips: float | None
    background: str = "plate"  # what the render was composited over: "real" (recorded) or "plate" (ava.eval.extras)
    mask_errors: object = None  # ava.eval.extras.MaskErrors inside the frame's foreground mask, if it has one


@dataclass
class Measured:
    """One checkpoint's results over the plan, plus the example pictures' panels."""

    checkpoint: Path
    step: int
    views: list[ViewResult] = field(default_factory=list)
    examples: dict[tuple[str, str, str], tuple] = field(default_factory=dict)  # view key -> (photo, render) [3,H,W]
    skipped: list[str] = field(default_factory=list)  # unreadable frames


def plan_views(dataset_dir: Path, identities: list[str], cameras: list[str], segment: str | None,
               frames: int, checkpoint, downsample: int) -> list[CameraPlan]:
    """For each identity and each requested camera in its calibration: the plate frame (the first
    usable one) and up to `frames` frames spread over the rest (of `segment` only, if given)."""
    from ava.runtime.datasets import checkpoint_capture

    plans, seen_cameras, segments_seen = [], set(), set()
    for identity in identities:
        probe = checkpoint_capture(dataset_dir, identity, downsample, checkpoint)
        present = [camera for camera in cameras if camera in probe.reader.camera_ids]
        seen_cameras.update(present)
        segment_of = {frame.frame_id: frame.segment for frame in probe.reader.frames}
        segments_seen.update(segment_of.values())
        for camera in present:
            part = checkpoint_capture(dataset_dir, identity, downsample, checkpoint, cameras=[camera])
            frame_ids = [part.sample_ids(index)[0] for index in range(len(part))]
            if len(frame_ids) < 2:
                continue  # one frame fits the plate and leaves nothing to measure
            rest = [frame for frame in frame_ids[1:] if segment is None or segment_of[frame] == segment]
            chosen = [rest[i] for i in spread(frames, len(rest))] if frames > 0 else rest
            if chosen:
                plans.append(CameraPlan(identity, camera, frame_ids[0], tuple(chosen),
                                        tuple(segment_of[frame] for frame in chosen)))
    missing = [camera for camera in cameras if camera not in seen_cameras]
    if missing:
        raise UserError(f"camera(s) {', '.join(missing)} are in none of the measured captures' calibrations")
    if segment is not None and segment not in segments_seen:
        raise UserError(f"segment {segment} has no frames in the measured captures; segments: "
                        f"{', '.join(sorted(segments_seen))}")
    if not plans:
        raise UserError("nothing to measure: every chosen camera has at most one frame (it fits the background "
                        "plate)" + (f" or no frame of segment {segment}" if segment else ""))
    return plans


def example_views(plans: list[CameraPlan]) -> set[tuple[str, str, str]]:
    """One (identity, camera, frame) per identity for the example picture: the middle measured
    frame of its first camera (chosen before measuring, so every checkpoint shows the same image)."""
    chosen = {}
    for plan in plans:
        chosen.setdefault(plan.identity, (plan.identity, plan.camera, plan.frames[len(plan.frames) // 2]))
    return set(chosen.values())


def _frame_index(part) -> dict[str, int]:
    return {part.sample_ids(index)[0]: index for index in range(len(part))}


@torch.no_grad()
def measure(checkpoint, plans: list[CameraPlan], dataset_dir: Path, downsample: int, device,
            lpips, examples: set[tuple[str, str, str]], progress=None, release_images=None) -> Measured:
    """Renders and measures every planned frame with `checkpoint` (a loaded ava.checkpoint.Checkpoint).

    lpips: an ava.runtime.metrics.Lpips or None. examples: (identity, camera, frame) keys whose
    photo and render (float [3,H,W] on the CPU) are kept for the example picture. progress: a callable
    advanced by one per measured frame. release_images: an ava.eval.extras.ReleaseImages, whose
    recorded backgrounds replace the fitted plate and whose masks give `psnr_mask`, where they exist.
    """
    from ava.data.capture import MemberError
    from ava.eval.extras import PLATE, REAL, MaskErrors
    from ava.runtime.datasets import checkpoint_capture
    from ava.runtime.metrics import camera_plate, held_out_view, structural_similarity

    model = checkpoint.build_autoencoder(raymarch_backend="torch" if device.type == "cpu" else None)
    model = model.to(device).eval()
    vertmean = torch.from_numpy(checkpoint.stats.vertmean)
    result = Measured(checkpoint.path, checkpoint.step)
    identities = list(checkpoint.identities)
    for plan in plans:
        part = checkpoint_capture(dataset_dir, plan.identity, downsample, checkpoint, cameras=[plan.camera],
                                  identity=identities.index(plan.identity))
        index = _frame_index(part)
        real = release_images.background(plan.identity, plan.camera, part.height, part.width) \
            if release_images is not None else None
        try:
            plate = real if real is not None else camera_plate(model, part.load_sample(index[plan.plate_frame]), device)
        except MemberError as error:
            result.skipped.append(f"{error} (the plate frame of camera {plan.camera}; camera skipped)")
            if progress:
                progress(len(plan.frames))
            continue
        for frame, segment in zip(plan.frames, plan.segments):
            try:
                sample = part.load_sample(index[frame])
            except MemberError as error:
                result.skipped.append(str(error))
                if progress:
                    progress(1)
                continue
            view = held_out_view(model, sample, plate, device, vertmean, checkpoint.stats.vertstd)
            ssim, ssim_head = structural_similarity(view.with_plate, view.image, view.head)
            result.views.append(ViewResult(
                identity=plan.identity, camera=plan.camera, frame=frame, segment=segment,
                errors=SquaredErrors.of(view), ssim=ssim, ssim_head=ssim_head,
                lpips=lpips(view.with_plate, view.image) if lpips is not None else None,
                background=REAL if real is not None else PLATE,
                mask_errors=MaskErrors.of(view.with_plate, view.image, release_images.mask(
                    plan.identity, plan.camera, frame, part.height, part.width)) if release_images is not None else None,
            ))
            key = (plan.identity, plan.camera, frame)
            if key in examples:
                result.examples[key] = (view.image.cpu(), view.with_plate.cpu())
            if progress:
                progress(1)
    return result
