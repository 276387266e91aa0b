"""`ava render` configuration (dataclasses only, so `ava --help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from ava.runtime.device import ThreadsFlag


@dataclass
class RenderConfig:
    """Render the driver's expressions (frames of one camera) with the driven identity. Writes
    OUT/<driver>_<driven>[+<segment>].mp4 and one PNG strip [gt | self | driven] per frame in
    OUT/<driver>_<driven>[+<segment>]/; with --orbit also a novel-view video of the first frame."""

    checkpoint: Path
    """An ava checkpoint (e.g. run/checkpoints/step_00001200.safetensors)."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("viz")
    """Output folder."""
    dataset_dir: Path | None = None
    """Dataset with the driver and driven captures (default: the one the checkpoint was trained on, if it still exists, else the demo synthetic set)."""
    driver: str | None = None
    """Capture whose expressions, head pose and camera drive the video (MCD--MCT--SID or subject id, trained or any capture of the dataset; default: the first trained identity)."""
    driven: str | None = None
    """Capture whose identity (neutral conditioning) is rendered: a trained identity or any capture of the dataset the checkpoint never saw, e.g. a held-out subject (MCD--MCT--SID or subject id; default: the second trained identity)."""
    camera: str | None = None
    """Camera id to render from (default: the driver's most frontal camera)."""
    segment: str | None = None
    """Only frames of this segment (e.g. EXP_jaw_open); default: all frames."""
    max_frames: int = 0
    """At most this many frames (0: all)."""
    downsample: int | None = None
    """Image size as sensor size / downsample (default: the training downsample)."""
    fps: int = 15
    """Frames per second of the videos."""
    orbit: bool = False
    """Also write a novel-view video: the first frame seen from cameras swinging around the head."""
    orbit_frames: int = 48
    """Views in the orbit video."""
    orbit_degrees: float = 60.0
    """How far the orbit swings to each side."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render."""
    threads: ThreadsFlag = 0
    driver_checkpoint: Path | None = None
    """Drive the avatar from headset frames instead: a driver from `ava train-driver` trained against --checkpoint; writes OUT/<headset>_headset_<driven>[+<segment>].mp4 and strips [5 headset views | driven render]."""
    headset: str | None = None
    """With --driver-checkpoint: the subject whose headset frames drive (MCD--MCT--SID or subject id; default: the driver's first held-out subject); --driven picks the identity rendered (default: the headset subject)."""
