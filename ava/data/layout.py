"""Where the files and zip members of one capture live (docs/data-layout.md).

`CaptureLayout(root)` names every path under `<root>` = `<dataset_dir>/<mcd>--<mct>--<sid>`; the
reader and the synthetic writer both use it, so they cannot disagree about the layout.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

NEUTRAL_SEGMENT = "EXP_neutral_peak"
# Part labels of segmentation_parts (DATASHEET.md); 0 is background or anything else.
SEGMENTATION_CLASSES = {
    0: "background", 1: "hair", 2: "body", 3: "chair", 4: "apparel", 5: "lenses", 6: "upper lip",
    7: "lower lip", 8: "upper teeth", 9: "lower teeth", 10: "tongue (visible)",
}
ENCODER_CAMERAS = (
    "cam-cyclop",
    "cam-left-eye-atl-temporal",
    "cam-left-mouth",
    "cam-right-eye-atl-temporal",
    "cam-right-mouth",
)


@dataclass(frozen=True)
class CaptureLayout:
    """Paths of one capture folder; `root` is `<dataset_dir>/<capture folder>`."""

    root: Path

    @property
    def decoder(self) -> Path:
        return self.root / "decoder"

    @property
    def encoder(self) -> Path:
        return self.root / "encoder"

    @property
    def calibration(self) -> Path:
        return self.decoder / "camera_calibration.json"

    @property
    def frame_list(self) -> Path:
        return self.decoder / "frame_list.csv"

    @property
    def head_pose_zip(self) -> Path:
        return self.decoder / "head_pose" / "head_pose.zip"

    def image_zip(self, camera_id: str) -> Path:
        return self.decoder / "image" / f"cam{camera_id}.zip"

    def segmentation_zip(self, camera_id: str) -> Path:
        return self.decoder / "segmentation_parts" / f"cam{camera_id}.zip"

    @property
    def keypoints_zip(self) -> Path:
        return self.decoder / "keypoints_3d" / "keypoints_3d.zip"

    @property
    def vertices_zip(self) -> Path:
        return self.decoder / "kinematic_tracking" / "registration_vertices.zip"

    @property
    def vertices_mean(self) -> Path:
        return self.decoder / "kinematic_tracking" / "registration_vertices_mean.npy"

    @property
    def vertices_variance(self) -> Path:
        return self.decoder / "kinematic_tracking" / "registration_vertices_variance.txt"

    @property
    def texture_zip(self) -> Path:
        return self.decoder / "uv_image" / "color.zip"

    @property
    def texture_mean(self) -> Path:
        return self.decoder / "uv_image" / "color_mean.png"

    @property
    def texture_variance(self) -> Path:
        return self.decoder / "uv_image" / "color_variance.txt"

    @property
    def encoder_frame_list(self) -> Path:
        return self.encoder / "frame_list.csv"

    def encoder_zip(self, camera: str) -> Path:
        return self.encoder / "image" / f"{camera}.zip"

    # Described only by unmerged branches of the original (docs/data-layout.md#beyond-the-original-code).
    def foreground_mask_zip(self, camera_id: str) -> Path:
        return self.decoder / "foreground_masks" / f"cam{camera_id}.zip"

    @property
    def background_zip(self) -> Path:
        return self.decoder / "background_image" / "background_image.zip"

    @property
    def expression_codes(self) -> Path:
        return self.decoder / "expression_codes" / "aeparams_1440000.pkl"

    @property
    def encodings(self) -> Path:
        return self.encoder / "encodings_gt.pt"

    @property
    def encodings_frame_list(self) -> Path:
        return self.encoder / "encodings_framelist.csv"

    def required_files(self) -> list[Path]:
        """Files a decoder dataset cannot work without (the per-camera image zips come on top)."""
        return [
            self.calibration,
            self.frame_list,
            self.head_pose_zip,
            self.vertices_zip,
            self.vertices_mean,
            self.vertices_variance,
            self.texture_zip,
            self.texture_mean,
            self.texture_variance,
        ]


# Member names inside the zips: `<prefix><frame>.<extension>`, `frame` the 6-digit form
# (formats.member_frame). Archives repacked by hand may put the members under another folder (or
# none); `detect_naming` finds the prefix an archive really uses.
_FRAME_MEMBER = re.compile(r"^(.*?)(\d{6,})\.([A-Za-z0-9]+)$")


class UnknownNaming(Exception):
    """An archive's member names do not say which prefix its frames use."""


@dataclass(frozen=True)
class MemberNaming:
    """How the members of one archive are named: `prefix + frame + "." + extension`."""

    prefix: str
    extension: str

    def member(self, frame: str) -> str:
        return f"{self.prefix}{frame}.{self.extension}"


def detect_naming(names: Iterable[str], expected: MemberNaming | None = None,
                  extensions: Iterable[str] = ()) -> MemberNaming:
    """The naming of the frame members among `names` (an archive's member list).

    The expected naming wins when any member follows it; otherwise the prefix (of those ending
    with the expected one, e.g. `extra/cam400940/` for `cam400940/`) that names the most frames.
    `extensions` are the allowed ones when nothing is expected. Raises UnknownNaming when two
    prefixes name equally many frames; an archive with no frame member keeps the expected naming.
    """
    allowed = {expected.extension} if expected is not None else set(extensions)
    counts = Counter()
    for name in names:
        match = _FRAME_MEMBER.match(name)
        if match and match.group(3) in allowed:
            counts[MemberNaming(match.group(1), match.group(3))] += 1
    if expected is not None and (expected in counts or not counts):
        return expected
    if not counts:
        raise UnknownNaming(f"no member is named like 000123.{'/'.join(sorted(allowed))}")
    candidates = [naming for naming in counts if expected is None or naming.prefix.endswith(expected.prefix)]
    candidates = sorted(candidates or counts, key=lambda naming: -counts[naming])
    if len(candidates) > 1 and counts[candidates[0]] == counts[candidates[1]]:
        found = ", ".join(f"{naming.member('NNNNNN')!r}" for naming in candidates[:4])
        raise UnknownNaming(f"frames are named in several ways ({found})")
    return candidates[0]


def image_naming(camera_id: str) -> MemberNaming:
    return MemberNaming(f"cam{camera_id}/", "avif")


def segmentation_naming(camera_id: str) -> MemberNaming:
    return MemberNaming(f"cam{camera_id}/", "png")


TEXTURE_NAMING = MemberNaming("color/", "avif")
VERTICES_NAMING = MemberNaming("", "ply")
HEAD_POSE_NAMING = MemberNaming("", "txt")
KEYPOINTS_NAMING = MemberNaming("", "npy")


def foreground_mask_naming(camera_id: str) -> MemberNaming:
    """Assumed like the image zips (the datasheet names no member); readers detect the prefix."""
    return MemberNaming(f"cam{camera_id}/", "avif")


def background_member(camera_id: str) -> str:
    """A camera's empty backdrop in background_image.zip: `{camera}.avif` (the datasheet's name;
    readers also accept `cam{camera}.avif` and any folder)."""
    return f"{camera_id}.avif"


def image_member(camera_id: str, frame: str) -> str:
    return image_naming(camera_id).member(frame)


def segmentation_member(camera_id: str, frame: str) -> str:
    return segmentation_naming(camera_id).member(frame)


def texture_member(frame: str) -> str:
    return TEXTURE_NAMING.member(frame)


def vertices_member(frame: str) -> str:
    return VERTICES_NAMING.member(frame)


def head_pose_member(frame: str) -> str:
    return HEAD_POSE_NAMING.member(frame)


def keypoints_member(frame: str) -> str:
    return KEYPOINTS_NAMING.member(frame)


def encoder_member(camera: str, frame: str) -> str:
    """A headset image, e.g. `cam-cyclop/000123.avif` (what `ava synth` writes; the release's
    prefix is unverified, so the reader detects it)."""
    return f"{camera}/{frame}.avif"
