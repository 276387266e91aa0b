"""`ava render --driver-checkpoint`: an avatar driven by headset frames.

The driver (a headset encoder, loaded through ava.checkpoint) turns each headset frame's five IR
views into an expression code; the decoder renders that code with the driven identity's neutral
conditioning, from one dome camera of the driven capture at its neutral frame's head pose (the
headset sees no head pose). The driver must have been trained against this decoder: its codes
mean nothing to another one, which is checked by the decoder's weight fingerprint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ava.errors import UserError

FRAMES_PER_CALL = 8


@torch.no_grad()
def render_headset(request, console) -> dict:
    """`request`: an ava.render.config.RenderConfig with driver_checkpoint set."""
    from rich.progress import Progress

    from ava.checkpoint import load_checkpoint, load_driver_checkpoint
    from ava.data.collate import collate
    from ava.data.headset_capture import HeadsetDataset
    from ava.render.cross_id import resolve_identity
    from ava.runtime.batch import to_device
    from ava.runtime.device import select_device
    from ava.runtime.driving import (
        decoder_downsample,
        dome_view,
        driver_dataset_dir,
        headset_panel,
        headset_subjects,
        neutral_sample_index,
        predict_codes,
        resolve_subjects,
        session_neutral_views,
    )
    from ava.runtime.images import hstack, save_png, to_uint8
    from ava.runtime.model import run_model
    from ava.runtime.video import VideoWriter

    if request.driver_checkpoint is None:
        raise UserError("--headset needs --driver-checkpoint (a driver from `ava train-driver`)")
    if request.orbit:
        raise UserError("--orbit renders dome frames; it cannot be combined with --driver-checkpoint")
    if request.driver is not None:
        raise UserError("--driver names a dome capture; with --driver-checkpoint the headset subject is --headset")
    device = select_device(request.device)
    decoder = load_checkpoint(request.checkpoint)
    driver = load_driver_checkpoint(request.driver_checkpoint)
    driver.check_decoder(decoder)
    model = decoder.build_autoencoder(raymarch_backend="torch" if device.type == "cpu" else None).to(device).eval()
    encoder = driver.build_encoder().to(device).eval()
    dataset_dir = driver_dataset_dir(request.dataset_dir, driver, decoder)
    available = headset_subjects(dataset_dir)
    if request.headset is not None:
        headset_folder = resolve_subjects([request.headset], available, dataset_dir)[0]
    else:
        held_out = [f for f in driver.config.get("resolved", {}).get("holdout_subjects", []) if f in available]
        if not held_out:
            raise UserError(f"name the subject whose headset frames drive with --headset (e.g. "
                            f"{', '.join(s.split('--')[-1] for s in available[:3]) or 'none here'})")
        headset_folder = held_out[0]
    identities = list(decoder.identities)
    driven, driven_index = resolve_identity(request.driven or headset_folder, identities, dataset_dir, 0)
    if driven_index is None:
        console.print(f"[yellow]note:[/] the decoder was not trained on {driven}; its colour calibration and "
                      "background use the first identity's")
    downsample = request.downsample or decoder_downsample(decoder)
    part, camera = dome_view(dataset_dir, driven, downsample, decoder, camera=request.camera, identity=driven_index)
    neutral = part[neutral_sample_index(part)]
    headset = HeadsetDataset(dataset_dir / headset_folder, size=encoder.config.image_size,
                             segments=None if request.segment is None else [request.segment])
    neutral_views = (session_neutral_views(dataset_dir / headset_folder, encoder.config.image_size)
                     if encoder.config.neutral else None)
    frames = list(range(len(headset)))
    if request.max_frames > 0:
        frames = frames[: request.max_frames]

    name = f"{headset_folder}_headset_{driven}" + (f"+{request.segment}" if request.segment else "")
    output = Path(request.output)
    written: dict = {"frames": [], "camera": camera, "headset": headset_folder, "driven": driven}
    with VideoWriter(output / f"{name}.mp4", fps=request.fps) as video, \
            Progress(console=console, transient=True, disable=not console.is_interactive) as progress:
        task = progress.add_task("rendering headset frames", total=len(frames))
        for start in range(0, len(frames), FRAMES_PER_CALL):
            chunk = frames[start : start + FRAMES_PER_CALL]
            views = torch.stack([headset.views(index) for index in chunk])
            codes = predict_codes(encoder, views, device, neutral=neutral_views).to(device)
            batch = to_device(collate([neutral] * len(chunk)), device)
            images = run_model(model, batch, code=codes)["irgbrec"]
            for offset, image in enumerate(images):
                strip = hstack([headset_panel(views[offset], image.shape[-2]), to_uint8(image)], gap=4)
                written["frames"].append(save_png(output / name / f"img_{start + offset:06d}.png", strip))
                video.write(strip)
            progress.advance(task, len(chunk))
    written["video"] = output / f"{name}.mp4"
    return written
