"""Where the files and zip members of one capture live (SPEC §1.2, §1.3).

`CaptureLayout(root)` names every path under `<root>` = `<dataset_dir>/<mcd>--<mct>--<sid>`; the
reader and the synthetic writer both use it, so they cannot disagree about the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


# Member names inside the zips; `frame` is already the 6-digit form (formats.member_frame).
def image_member(camera_id: str, frame: str) -> str:
    return f"cam{camera_id}/{frame}.avif"


def segmentation_member(camera_id: str, frame: str) -> str:
    return f"cam{camera_id}/{frame}.png"


def texture_member(frame: str) -> str:
    return f"color/{frame}.avif"


def vertices_member(frame: str) -> str:
    return f"{frame}.ply"


def head_pose_member(frame: str) -> str:
    return f"{frame}.txt"


def keypoints_member(frame: str) -> str:
    return f"{frame}.npy"
