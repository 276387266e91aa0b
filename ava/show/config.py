"""`ava show` configuration (dataclasses only, so `ava --help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

PARTS = ("image", "mesh", "keypoints", "segmentation", "cameras", "headset", "background", "mask")
ALL_PARTS = "all"


@dataclass
class ShowConfig:
    """Pictures of one capture, to look at the data before training: the camera image; the tracked
    mesh projected onto it through the head pose and calibration exactly as training uses them (a
    wrong calibration shows at once); the 3D keypoints projected with their validity; the part
    segmentation over the image with a legend; the rig's cameras around the head seen from above;
    the headset's IR views; the camera's recorded empty background beside the photo; and the
    foreground mask over the photo. PNGs go to OUT/<subject>_<camera>_<frame>_<part>.png.

    With --parts all (the default) parts whose files the capture lacks are skipped with a note; a
    part named explicitly but missing, or a part that fails, is an error (exit status 1) and the
    other pictures are still written."""

    capture_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CAPTURE_DIR")]
    """A capture folder (<dataset>/<mcd>--<mct>--<sid>, real or from `ava synth`)."""
    camera: str | None = None
    """Camera id (default: the capture's most frontal camera)."""
    frame: int | None = None
    """Frame number as in frame_list.csv (default: the capture's neutral frame)."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("show")
    """Output folder."""
    parts: tuple[Literal["all", "image", "mesh", "keypoints", "segmentation", "cameras", "headset", "background",
                         "mask"], ...] = (ALL_PARTS,)
    """Pictures to write."""
    downsample: int | None = None
    """Load images at sensor size / downsample (default: the size they are stored at)."""
    mesh_style: Literal["shaded", "wireframe"] = "shaded"
    """The mesh as shaded, half-transparent faces (back faces culled) or as every edge."""
    topology: Path | None = None
    """Mesh topology OBJ for the faces (default: <dataset>/face_topology.obj, else the original's)."""
    headset_frame: int | None = None
    """Headset frame to show (default: --frame if the headset's frame list has it, else its first)."""
