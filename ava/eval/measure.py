"""Which images `ava eval` measures, and measuring one checkpoint on them.

The metric code is `ava.runtime.metrics`, the same as training's held-out PSNR: per camera a
background plate is fitted to one frame (the first usable one, never measured), the other frames
are rendered and composited over that plate (`psnr`, `ssim`, `lpips`), over the model's own
background row (`psnr_model_bg`), and measured inside the tracked mesh's silhouette
(`psnr_head`, `ssim_head`).

Subjects come in groups (docs/evaluation.md): `trained` identities, the `validation` and `test`
subjects the checkpoint's run held out of training, and `unseen` captures the checkpoint never
heard of. A subject the model never trained on is rendered from its own neutral frame
(the `model` method) with the neutral colour calibration (ava.nn.colorcal.UNSEEN_IDENTITY) or
one fitted on frames and cameras that are never measured, and beside it two baselines on the same
images: the trained identity whose neutral texture is nearest (`nearest_identity`) and the mean
of the trained identities' neutral textures and meshes (`mean_identity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ava.errors import UserError
from ava.runtime.metrics import SquaredErrors, spread

MODEL, NEAREST, MEAN = "model", "nearest_identity", "mean_identity"
METHODS = (MODEL, NEAREST, MEAN)
METHOD_NAMES = {MODEL: "model", NEAREST: "nearest id", MEAN: "mean id"}
TRAINED, VALIDATION, TEST, UNSEEN = "trained", "validation", "test", "unseen"
GROUPS = (TRAINED, VALIDATION, TEST, UNSEEN)


@dataclass(frozen=True)
class CameraPlan:
    """The frames of one (identity, camera) pair: one to fit the plate, the others to measure."""

    identity: str  # capture folder MCD--MCT--SID
    group: str  # one of GROUPS
    camera: str
    plate_frame: str
    frames: tuple[str, ...]
    segments: tuple[str, ...]  # segment of each measured frame


@dataclass
class ViewResult:
    """The measurements of one image under one checkpoint and one method."""

    identity: str
    group: str
    method: str
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
    examples: dict[tuple[str, str, str], dict[str, torch.Tensor]] = field(default_factory=dict)
    """(identity, camera, frame) -> {"photo": [3,H,W], method: render over the plate [3,H,W]} on the CPU."""
    skipped: list[str] = field(default_factory=list)  # unreadable frames
    nearest: dict[str, str] = field(default_factory=dict)  # unseen identity -> its nearest trained identity
    colours: dict[str, dict[str, dict]] = field(default_factory=dict)  # unseen identity -> method -> fitted row


def plan_views(dataset_dir: Path, subjects: list[tuple[str, str]], cameras: list[str], segment: str | None,
               frames: int, checkpoint, downsample: int) -> list[CameraPlan]:
    """For each (identity, group) and each requested camera in its calibration: the plate frame
    (the first usable one) and up to `frames` frames spread over the rest (of `segment` only, if given)."""
    from ava.runtime.datasets import checkpoint_capture

    plans, seen_cameras, segments_seen = [], set(), set()
    for identity, group in subjects:
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
                plans.append(CameraPlan(identity, group, camera, frame_ids[0], tuple(chosen),
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


def plan_colour_fits(dataset_dir: Path, plans: list[CameraPlan], checkpoint, downsample: int,
                     count: int) -> dict[str, tuple[tuple[str, str], ...]]:
    """For each subject the checkpoint has no identity row for: up to `count` (camera, frame) samples
    to fit its colour calibration on, spread over frames that are measured on no camera, seen by
    cameras the checkpoint trained on (their rows are calibrated) that are not measured either."""
    from ava.runtime.datasets import checkpoint_capture, held_out_cameras

    fits = {}
    for identity in dict.fromkeys(plan.identity for plan in plans if plan.identity not in checkpoint.identities):
        mine = [plan for plan in plans if plan.identity == identity]
        measured_cameras = {plan.camera for plan in mine}
        measured_frames = {frame for plan in mine for frame in plan.frames}
        probe = checkpoint_capture(dataset_dir, identity, downsample, checkpoint)
        excluded = measured_cameras | set(held_out_cameras(checkpoint))
        cameras = [camera for camera in probe.reader.camera_ids if camera in checkpoint.cameras and camera not in excluded]
        if not cameras:
            raise UserError(f"--colorcal fit: {identity} has no camera that the checkpoint trained on and that is not "
                            "measured; measure fewer cameras or use --colorcal neutral")
        part = checkpoint_capture(dataset_dir, identity, downsample, checkpoint, cameras=cameras)
        candidates = [part.sample_ids(index) for index in range(len(part))]
        candidates = [(camera, frame) for frame, camera in candidates if frame not in measured_frames]
        if not candidates:
            raise UserError(f"--colorcal fit: every frame of {identity} is measured; measure fewer (--frames) or use "
                            "--colorcal neutral")
        fits[identity] = tuple(candidates[i] for i in spread(count, len(candidates)))
    return fits


def example_views(plans: list[CameraPlan]) -> set[tuple[str, str, str]]:
    """One (identity, camera, frame) per identity for the example picture: the middle measured
    frame of its first camera (chosen before measuring, so every checkpoint shows the same image)."""
    chosen = {}
    for plan in plans:
        chosen.setdefault(plan.identity, (plan.identity, plan.camera, plan.frames[len(plan.frames) // 2]))
    return set(chosen.values())


class IdentityBank:
    """The neutral conditioning (normalised texture [3,T,T] and mesh [V,3]) of a checkpoint's trained
    identities found in the dataset: the baselines' identities."""

    def __init__(self, checkpoint, dataset_dir: Path, downsample: int) -> None:
        from ava.runtime.datasets import checkpoint_capture

        self.folders, textures, meshes = [], [], []
        for index, folder in enumerate(checkpoint.identities):
            if not (Path(dataset_dir) / folder / "decoder").is_dir():
                continue
            texture, mesh = checkpoint_capture(dataset_dir, folder, downsample, checkpoint,
                                               identity=index).neutral_conditioning()
            self.folders.append(folder)
            textures.append(texture)
            meshes.append(mesh)
        self.textures = torch.stack(textures) if textures else None  # [I,3,T,T]
        self.meshes = torch.stack(meshes) if meshes else None  # [I,V,3]

    def __bool__(self) -> bool:
        return bool(self.folders)

    def nearest(self, texture: torch.Tensor) -> int:
        """Position in `folders` of the identity whose neutral texture is nearest to `texture`
        [3,T,T] (normalised; mean squared difference)."""
        return int(((self.textures - texture[None]) ** 2).flatten(1).mean(dim=1).argmin())

    def target(self, position: int) -> dict:
        """run_model's `target` for identity `position` of `folders`."""
        return {"neut_avgtex": self.textures[position][None], "neut_verts": self.meshes[position][None]}

    def mean_target(self) -> dict:
        """run_model's `target` for the mean identity: the mean neutral texture and mesh."""
        return {"neut_avgtex": self.textures.mean(dim=0, keepdim=True), "neut_verts": self.meshes.mean(dim=0, keepdim=True)}


def _frame_index(part) -> dict[str, int]:
    return {part.sample_ids(index)[0]: index for index in range(len(part))}


def methods_of(identity: str, checkpoint, baselines: bool) -> tuple[str, ...]:
    """The methods an identity is measured with: the model, and for a subject the checkpoint never
    trained on also the baselines (when asked for)."""
    return METHODS if baselines and identity not in checkpoint.identities else (MODEL,)


@torch.no_grad()
def measure(checkpoint, plans: list[CameraPlan], dataset_dir: Path, downsample: int, device,
            lpips, examples: set[tuple[str, str, str]], progress=None, baselines: bool = False,
            colour_fits: dict[str, tuple[tuple[str, str], ...]] | None = None, release_images=None) -> Measured:
    """Renders and measures every planned frame with `checkpoint` (a loaded ava.checkpoint.Checkpoint).

    lpips: an ava.runtime.metrics.Lpips or None. examples: (identity, camera, frame) keys whose
    photo and renders (float [3,H,W] on the CPU) are kept for the example picture. progress: a
    callable advanced by one per measured image. baselines: also measure unseen subjects with the
    nearest and the mean trained identity (needs trained captures in the dataset). colour_fits:
    unseen identity -> (camera, frame) samples to fit its colour calibration on (plan_colour_fits);
    None keeps the neutral calibration. release_images: an ava.eval.extras.ReleaseImages, whose
    recorded backgrounds replace the fitted plate and whose masks give `psnr_mask`, where they exist.
    """
    from ava.data.capture import MemberError
    from ava.eval.extras import PLATE, REAL, MaskErrors
    from ava.runtime.datasets import checkpoint_capture
    from ava.runtime.metrics import camera_plate, fit_identity_colour, held_out_view, structural_similarity

    model = checkpoint.build_autoencoder(raymarch_backend="torch" if device.type == "cpu" else None)
    model = model.to(device).eval()
    vertmean = torch.from_numpy(checkpoint.stats.vertmean)
    vertstd = checkpoint.stats.vertstd
    result = Measured(checkpoint.path, checkpoint.step)
    identities = list(checkpoint.identities)
    bank = IdentityBank(checkpoint, dataset_dir, downsample) if baselines else None
    renderers: dict[str, dict[str, tuple]] = {}  # identity -> method -> (target, colour)

    def renderers_of(identity: str, part) -> dict[str, tuple]:
        if identity in renderers:
            return renderers[identity]
        targets: dict[str, dict | None] = {MODEL: None}
        if identity not in identities and bank:
            texture, _ = part.neutral_conditioning()
            nearest = bank.nearest(texture)
            result.nearest[identity] = bank.folders[nearest]
            targets[NEAREST] = bank.target(nearest)
            targets[MEAN] = bank.mean_target()
        chosen = {}
        for method, target in targets.items():
            colour = None
            if colour_fits and identity in colour_fits:
                samples = _fit_samples(dataset_dir, identity, downsample, checkpoint, colour_fits[identity])
                colour = fit_identity_colour(model, samples, device, vertmean, vertstd, target)
                result.colours.setdefault(identity, {})[method] = colour.to_dict()
            chosen[method] = (target, colour)
        renderers[identity] = chosen
        return chosen

    for plan in plans:
        index = identities.index(plan.identity) if plan.identity in identities else None
        part = checkpoint_capture(dataset_dir, plan.identity, downsample, checkpoint, cameras=[plan.camera],
                                  identity=index)
        methods = renderers_of(plan.identity, part)
        frame_index = _frame_index(part)
        real = release_images.background(plan.identity, plan.camera, part.height, part.width) \
            if release_images is not None else None
        try:
            plate_sample = None if real is not None else part.load_sample(frame_index[plan.plate_frame])
        except MemberError as error:
            result.skipped.append(f"{error} (the plate frame of camera {plan.camera}; camera skipped)")
            if progress:
                progress(len(plan.frames) * len(methods))
            continue
        # The recorded empty background where the capture has one, else a plate fitted per method.
        plates = {method: real if real is not None else camera_plate(model, plate_sample, device, target, colour)
                  for method, (target, colour) in methods.items()}
        for frame, segment in zip(plan.frames, plan.segments):
            try:
                sample = part.load_sample(frame_index[frame])
            except MemberError as error:
                result.skipped.append(str(error))
                if progress:
                    progress(len(methods))
                continue
            key = (plan.identity, plan.camera, frame)
            for method, (target, colour) in methods.items():
                view = held_out_view(model, sample, plates[method], device, vertmean, vertstd, target, colour)
                ssim, ssim_head = structural_similarity(view.with_plate, view.image, view.head)
                result.views.append(ViewResult(
                    identity=plan.identity, group=plan.group, method=method, camera=plan.camera, frame=frame,
                    segment=segment, errors=SquaredErrors.of(view), ssim=ssim, ssim_head=ssim_head,
                    lpips=lpips(view.with_plate, view.image) if lpips is not None else None,
                    background=REAL if real is not None else PLATE,
                    mask_errors=MaskErrors.of(view.with_plate, view.image, release_images.mask(
                        plan.identity, plan.camera, frame, part.height, part.width))
                    if release_images is not None else None,
                ))
                if key in examples:
                    result.examples.setdefault(key, {"photo": view.image.cpu()})[method] = view.with_plate.cpu()
                if progress:
                    progress(1)
    return result


def _fit_samples(dataset_dir: Path, identity: str, downsample: int, checkpoint, chosen) -> list[dict]:
    """The samples (camera, frame) of `chosen`, loaded as the checkpoint's model expects them."""
    from ava.runtime.datasets import checkpoint_capture

    samples = []
    for camera in dict.fromkeys(camera for camera, _ in chosen):
        part = checkpoint_capture(dataset_dir, identity, downsample, checkpoint, cameras=[camera])
        index = _frame_index(part)
        samples += [part[index[frame]] for cam, frame in chosen if cam == camera]
    return samples
