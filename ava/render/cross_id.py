"""`ava render`: cross-identity videos (the driver's expressions on the driven identity) and
orbits (novel views of one frame), from a checkpoint.

Normalisation statistics, the camera list (camindex) and the identity list (idindex) all come
from the checkpoint, so inputs are normalised exactly as in training. Everything runs in eval
mode under torch.no_grad (docs/original-quirks.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ava.errors import UserError
from ava.runtime.datasets import checkpoint_capture, find_capture, resolve_dataset_dir
from ava.runtime.device import select_device


def resolve_identity(text: str | None, identities: list[str], dataset_dir: Path, default: int) -> tuple[str, int | None]:
    """(capture folder, idindex or None when the capture was not trained on): a trained identity
    (capture or subject id), or any capture folder of the dataset (capture or subject id)."""
    if text is None:
        return identities[default], default
    matches = [i for i, folder in enumerate(identities) if folder == text or folder.split("--")[-1] == text]
    if len(matches) == 1:
        return identities[matches[0]], matches[0]
    if len(matches) > 1:
        raise UserError(f"{text} matches several trained captures; name one as MCD--MCT--SID")
    folder = find_capture(text, dataset_dir)
    if folder is not None:
        return folder, None  # a capture the checkpoint never trained on (docs/evaluation.md, "Unseen subjects")
    raise UserError(f"unknown identity {text}: not among the checkpoint's {len(identities)} identities "
                    f"(e.g. {', '.join(identities[:3])}) and no folder {dataset_dir / text}")


def select_frames(part, segment: str | None, max_frames: int) -> list[int]:
    """Sample indices of `part` (one camera) in frame-list order, optionally one segment only."""
    segments = {frame.frame_id: frame.segment for frame in part.reader.frames}
    indices = list(range(len(part)))
    if segment is not None:
        indices = [i for i in indices if segments[part.sample_ids(i)[0]] == segment]
        if not indices:
            known = sorted(set(segments.values()))
            raise UserError(f"segment {segment} has no frames in {part.reader.layout.root}; segments: {', '.join(known)}")
    return indices[:max_frames] if max_frames > 0 else indices


def orbit_views(camrot: torch.Tensor, campos: torch.Tensor, centre: torch.Tensor, count: int,
                degrees: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(camrot [3,3], campos [3]) of `count` cameras swinging +-`degrees` about the camera's up
    axis through `centre` (all in the head frame), each looking at `centre`."""
    from ava.data.calibration import look_at_rotation, rotation_about_axis

    up = -camrot[1].double().numpy()  # image rows run down, so the camera's up is -y
    target = centre.double().numpy()
    offset = (campos - centre).double().numpy()
    views = []
    for index in range(count):
        angle = math.radians(degrees) * math.sin(2 * math.pi * index / count)
        position = target + rotation_about_axis(up, angle) @ offset
        rotation = look_at_rotation(position, target, up)
        views.append((torch.from_numpy(rotation).float(), torch.from_numpy(position).float()))
    return views


@torch.no_grad()
def render(request, console) -> dict:
    """`request`: an ava.render.config.RenderConfig."""
    from ava.checkpoint import load_checkpoint
    from ava.data.collate import collate
    from ava.runtime.batch import to_device
    from ava.runtime.cameras import frontal_cameras
    from ava.runtime.images import hstack, save_png, to_uint8
    from ava.runtime.model import run_model
    from ava.runtime.video import VideoWriter

    device = select_device(request.device)
    checkpoint = load_checkpoint(request.checkpoint)
    model = checkpoint.build_autoencoder(raymarch_backend="torch" if device.type == "cpu" else None)
    model = model.to(device).eval()
    dataset_dir = resolve_dataset_dir(request.dataset_dir, checkpoint)
    downsample = request.downsample or int(checkpoint.extra_state.get("downsample", 0) or
                                           checkpoint.config.get("train", {}).get("downsample", 8))
    identities = list(checkpoint.identities)
    driver, driver_index = resolve_identity(request.driver, identities, dataset_dir, 0)
    driven, driven_index = resolve_identity(request.driven, identities, dataset_dir, min(1, len(identities) - 1))
    if driver_index is None:
        console.print(f"[yellow]note:[/] {driver} was not trained on: it is rendered with the neutral colour "
                      "calibration (no identity row) and the mean identity's background (docs/evaluation.md)",
                      soft_wrap=True)
    probe = checkpoint_capture(dataset_dir, driver, downsample, checkpoint, identity=driver_index)
    held_out = checkpoint.config.get("resolved", {}).get("holdout_cameras", [])
    camera = request.camera or frontal_cameras([probe], exclude=held_out)[0]
    if camera not in checkpoint.cameras:
        raise UserError(f"camera {camera} was not part of training; the checkpoint knows {len(checkpoint.cameras)} "
                        f"cameras, e.g. {', '.join(checkpoint.cameras[:4])}")
    if camera not in probe.reader.camera_ids:
        raise UserError(f"camera {camera} is not in {driver}'s calibration; its cameras: "
                        f"{', '.join(probe.reader.camera_ids[:8])}")
    driver_part = checkpoint_capture(dataset_dir, driver, downsample, checkpoint, cameras=[camera], identity=driver_index)
    frames = select_frames(driver_part, request.segment, request.max_frames)
    driven_sample = checkpoint_capture(dataset_dir, driven, downsample, checkpoint, identity=driven_index)[0]
    target = to_device({"neut_avgtex": driven_sample["neut_avgtex"][None],
                        "neut_verts": driven_sample["neut_verts"][None]}, device)

    name = f"{driver}_{driven}" + (f"+{request.segment}" if request.segment else "")
    output = Path(request.output)
    written: dict = {"frames": [], "camera": camera, "driver": driver, "driven": driven}
    strips_dir = output / name
    from rich.progress import track

    with VideoWriter(output / f"{name}.mp4", fps=request.fps) as video:
        for position, index in enumerate(track(frames, description="rendering", console=console, transient=True,
                                               disable=not console.is_interactive)):
            batch = to_device(collate([driver_part[index]]), device)
            own = run_model(model, batch)["irgbrec"][0]
            other = run_model(model, batch, target=target)["irgbrec"][0]
            strip = hstack([to_uint8(batch["image"][0]), to_uint8(own), to_uint8(other)])
            written["frames"].append(save_png(strips_dir / f"img_{position:06d}.png", strip))
            video.write(strip)
    written["video"] = output / f"{name}.mp4"

    if request.orbit:
        batch = to_device(collate([driver_part[frames[0]]]), device)
        centre = run_model(model, batch)["verts"][0].mean(dim=0)
        views = orbit_views(batch["camrot"][0], batch["campos"][0], centre, request.orbit_frames, request.orbit_degrees)
        orbit_dir = output / f"{name}_orbit"
        written["orbit_frames"] = []
        with VideoWriter(output / f"{name}_orbit.mp4", fps=request.fps) as video:
            for position, (camrot, campos) in enumerate(track(views, description="orbit", console=console,
                                                              transient=True, disable=not console.is_interactive)):
                moved = dict(batch, camrot=camrot[None], campos=campos[None])
                own = run_model(model, moved)["irgbrec"][0]
                other = run_model(model, moved, target=target)["irgbrec"][0]
                strip = hstack([to_uint8(own), to_uint8(other)])
                written["orbit_frames"].append(save_png(orbit_dir / f"view_{position:03d}.png", strip))
                video.write(strip)
        written["orbit_video"] = output / f"{name}_orbit.mp4"
    return written

