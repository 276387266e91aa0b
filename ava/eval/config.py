"""`ava eval` configuration (dataclasses only, so `ava --help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

HELD_OUT = "held-out"


@dataclass
class EvalConfig:
    """Measure a checkpoint on cameras it never trained on: PSNR (whole image over a fitted
    background plate, inside the head mask, and over the model's own background), SSIM (whole image
    and head mask) and LPIPS (only when its weights are already on disk), per identity, per camera
    and overall. Writes OUT/metrics.json, OUT/metrics.csv, OUT/samples.csv (one row per image) and
    OUT/examples.png, and prints a table; --compare puts a second checkpoint beside the first,
    measured on the same images."""

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
    identities: tuple[str, ...] = ()
    """Trained identities to measure (capture or subject ids); default: all of them."""
    frames: int = 16
    """Frames per identity and camera, spread evenly over the capture (0: all). The first frame of
    each camera is never measured: it fits that camera's background plate."""
    compare: Path | None = None
    """A second checkpoint (same identities and cameras) to measure on the same images."""
    downsample: int | None = None
    """Image size as sensor size / downsample (default: the first checkpoint's training downsample)."""
    background: Literal["auto", "plate"] = "auto"
    """What renders are composited over: auto: the camera's recorded background (the release's background_image group) where the capture has one, else a plate fitted to the camera's first frame; plate: always the fitted plate."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render."""
