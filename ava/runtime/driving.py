"""What driving a decoder from headset frames needs in more than one command (`ava render
--driver-checkpoint`, `ava train-driver`, `ava eval-driver`): finding subjects with headset data,
the dome view a driven avatar is rendered in, running the headset encoder over frames, and the
picture of the five IR views.

It sits in ava.runtime, below the commands, because ava.render (ava.render.driven) and ava.driver
both use it and commands never import each other (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ava.errors import UserError


def headset_subjects(dataset_dir: Path, required: bool = False) -> list[str]:
    """Capture folders of `dataset_dir` with both a dome (decoder/) and a headset (encoder/) session,
    sorted; with `required`, none is a UserError saying how to get some."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise UserError(f"dataset folder {dataset_dir} does not exist")
    folders = sorted(path.name for path in dataset_dir.iterdir()
                     if (path / "decoder").is_dir() and (path / "encoder").is_dir())
    if required and not folders:
        raise UserError(f"no capture in {dataset_dir} has both a dome (decoder/) and a headset (encoder/) session; "
                        "generate one with `ava synth` or download the encoder asset group")
    return folders


def dome_only_captures(dataset_dir: Path) -> list[str]:
    """Capture folders of `dataset_dir` with a dome (decoder/) but no headset (encoder/) session, sorted."""
    return sorted(path.name for path in Path(dataset_dir).iterdir()
                  if (path / "decoder").is_dir() and not (path / "encoder").is_dir())


def resolve_subjects(texts: Sequence[str], folders: Sequence[str], dataset_dir: Path) -> list[str]:
    """Capture folders named by `texts` (MCD--MCT--SID or subject ids) among `folders`."""
    chosen = []
    for text in texts:
        matches = [folder for folder in folders if folder == text or folder.split("--")[-1] == text]
        if len(matches) > 1:
            raise UserError(f"{text} matches several captures ({', '.join(matches[:3])}); name one as MCD--MCT--SID")
        if not matches:
            hint = ("it has no encoder/ folder: download the encoder asset group (ava download --assets encoder)"
                    if (Path(dataset_dir) / text / "decoder").is_dir() else
                    f"captures with headset data there: {', '.join(folders[:4]) or 'none'}")
            raise UserError(f"no subject {text} with headset data in {dataset_dir}; {hint}")
        chosen.append(matches[0])
    if len(set(chosen)) != len(chosen):
        raise UserError(f"a subject is named twice in {list(texts)}")
    return chosen


def dome_view(dataset_dir: Path, folder: str, downsample: int, checkpoint, camera: str | None = None,
              identity: int | None = None):
    """(the capture's samples from one camera as the decoder reads them, that camera's id).

    The camera is `camera`, else the capture's most frontal camera among those the decoder was
    trained with (else its most frontal one). A camera the decoder does not know gets camindex 0
    (its colour calibration and background rows are then another camera's).
    """
    from ava.data.dataset import CaptureDataset
    from ava.runtime.cameras import frontal_cameras
    from ava.runtime.datasets import checkpoint_capture

    if camera is None:
        probe = CaptureDataset(Path(dataset_dir) / folder, downsample, stats=checkpoint.stats)
        known = set(checkpoint.cameras)
        held_out = checkpoint.config.get("resolved", {}).get("holdout_cameras", [])
        unknown = [c for c in probe.reader.camera_ids if c not in known]
        camera = frontal_cameras([probe], exclude=set(held_out) | set(unknown))[0]
    part = checkpoint_capture(dataset_dir, folder, downsample, checkpoint, cameras=[camera], identity=identity)
    if camera not in checkpoint.cameras:
        part.camera_ids = [camera]
    return part, camera


def frame_index(part) -> dict[str, int]:
    """Dome frame id -> sample index of a one-camera part."""
    return {part.sample_ids(index)[0]: index for index in range(len(part))}


def neutral_sample_index(part) -> int:
    """Sample index of the capture's neutral frame (the first frame if that one is unusable)."""
    return frame_index(part).get(part.reader.neutral_frame.frame_id, 0)


@torch.no_grad()
def predict_codes(encoder: torch.nn.Module, views: torch.Tensor, device: torch.device, batch: int = 64,
                  neutral: torch.Tensor | None = None) -> torch.Tensor:
    """views [N,5,S,S] (0..255) -> codes [N,16,4,4] on the CPU (the encoder in eval mode).

    neutral: the subject's neutral headset frame [5,S,S] or one per frame [N,5,S,S], for an
    encoder conditioned on it (ava.nn.headset_encoder); ignored by one that is not.
    """
    was_training = encoder.training
    encoder.eval()
    conditioned = bool(getattr(encoder.config, "neutral", False))
    codes = []
    for start in range(0, len(views), batch):
        chunk = views[start : start + batch].to(device).float()
        if not conditioned:
            codes.append(encoder(chunk).cpu())
            continue
        if neutral is None:
            raise ValueError("this driver is conditioned on the subject's neutral headset frame; pass it")
        reference = neutral if neutral.dim() == 3 else neutral[start : start + batch]
        codes.append(encoder(chunk, reference.to(device).float()).cpu())
    encoder.train(was_training)
    return torch.cat(codes) if codes else torch.zeros(0, 16, 4, 4)


def session_neutral_views(root: Path, size: int) -> torch.Tensor:
    """uint8 [5,S,S]: the neutral frame of a capture's headset session
    (ava.data.headset_capture.HeadsetDataset.neutral_frame; its first frame when it has no neutral segment)."""
    from ava.data.headset_capture import HeadsetDataset

    headset = HeadsetDataset(root, size=size)
    neutral = headset.neutral_frame()
    return headset.views(0 if neutral is None else neutral)


def headset_panel(views: torch.Tensor, height: int) -> np.ndarray:
    """views [5,S,S] (0..255) -> uint8 [height, 5 x height + gaps, 3]: the five IR views side by side."""
    from ava.runtime.images import hstack

    resized = F.interpolate(views.float()[:, None], size=(height, height), mode="bilinear", align_corners=False)
    grey = resized[:, 0].clamp(0, 255).round().to(torch.uint8).cpu().numpy()
    return hstack([np.repeat(view[..., None], 3, axis=-1) for view in grey])


def driver_dataset_dir(explicit: Path | None, driver, decoder) -> Path:
    """--dataset-dir, else the folder the driver was trained on (if it still exists), else the
    decoder's dataset (see runtime.datasets.resolve_dataset_dir)."""
    from ava.runtime.datasets import resolve_dataset_dir

    if explicit is None:
        recorded = driver.extra_state.get("dataset_dir") or driver.config.get("resolved", {}).get("dataset_dir")
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
    return resolve_dataset_dir(explicit, decoder)


def decoder_downsample(decoder) -> int:
    """The downsample the decoder was trained at (images of that size are what it knows best)."""
    return int(decoder.extra_state.get("downsample", 0) or decoder.config.get("train", {}).get("downsample", 8))
