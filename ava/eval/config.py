"""`ava eval` configuration (dataclasses only, so `ava --help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from ava.runtime.device import ThreadsFlag

HELD_OUT = "held-out"
SUBJECT_GROUPS = ("trained", "validation", "test")


@dataclass
class EvalConfig:
    """Measure a checkpoint on cameras it never trained on, for its trained identities and for
    subjects it never trained on (the validation and test subjects its run held out, or any other
    capture), the latter beside two baselines (the nearest trained identity, the mean identity):
    PSNR (whole image over a fitted background plate, inside the head mask, and over the model's own
    background), SSIM (whole image and head mask) and LPIPS (only when its weights are already on
    disk), per identity, camera and subject group. Writes OUT/metrics.json, OUT/metrics.csv,
    OUT/samples.csv (one row per image), OUT/examples.png and OUT/examples/<identity>.png, and
    prints a table; --compare puts a second checkpoint beside the first, measured on the same
    images. The protocol is docs/evaluation.md."""

    checkpoint: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """An ava checkpoint (e.g. run/checkpoints/step_00000400.safetensors)."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("eval")
    """Output folder."""
    dataset_dir: Path | None = None
    """Dataset with the checkpoint's captures (default: the one it was trained on, if it still
    exists, else the demo synthetic set)."""
    cameras: tuple[str, ...] = (HELD_OUT,)
    """Camera ids to measure on, or `held-out`: the cameras the checkpoint's run held out of
    training (recorded in the checkpoint)."""
    segment: str | None = None
    """Only frames of this segment, e.g. EXP_free_face (the datasheet's recommended held-out
    segment); default: frames of every segment."""
    identities: tuple[str, ...] = SUBJECT_GROUPS
    """Whom to measure: the groups `trained` (the checkpoint's identities), `validation` and `test` (the subjects its run held out of training, recorded in the checkpoint), and/or capture or subject ids: trained ones, or captures in the dataset the checkpoint never saw (reported as `unseen`)."""
    frames: int = 16
    """Frames per identity and camera, spread evenly over the capture (0: all). The first frame of
    each camera is never measured: it fits that camera's background plate."""
    baselines: bool = True
    """For subjects the checkpoint never trained on, also measure on the same images the trained identity whose neutral texture is nearest and the mean identity (the mean neutral texture and mesh of the trained identities): docs/evaluation.md."""
    colorcal: Literal["neutral", "fit"] = "neutral"
    """Colour calibration of a subject the checkpoint has no identity row for: neutral (the camera's row alone, the identity's gain and bias zero) or fit (a gain and bias per channel fitted by least squares, inside the head, on --colorcal-frames samples whose frames and cameras are never measured, from cameras the checkpoint trained on)."""
    colorcal_frames: int = 4
    """With --colorcal fit: samples (frame, camera) per subject to fit on."""
    compare: Path | None = None
    """A second checkpoint (same identities and cameras) to measure on the same images."""
    downsample: int | None = None
    """Image size as sensor size / downsample (default: the first checkpoint's training downsample)."""
    background: Literal["auto", "plate"] = "auto"
    """What renders are composited over: auto: the camera's recorded background (the release's background_image group) where the capture has one, else a plate fitted to the camera's first frame; plate: always the fitted plate."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render."""
    threads: ThreadsFlag = 0
