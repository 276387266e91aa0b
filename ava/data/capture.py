"""One capture's decoder data: what exists, and loading one member at a time (SPEC §1, §2.3).

Construction checks the required files (a clear error naming the missing ones), reads the
calibration and the frame list, and takes an inventory of the zips' member lists, so that frames
whose members are missing (the ~0.1% "dropped frames") are never asked for. Members that exist but
cannot be decoded are found only when loaded; the dataset skips those.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ava.data import layout as names
from ava.data.bad_data import Problem
from ava.data.calibration import Camera, read_calibration
from ava.data.formats import (
    BadMember,
    decode_image,
    member_frame,
    parse_frame_list,
    parse_head_pose,
    parse_npy,
    parse_ply_vertices,
)
from ava.data.layout import NEUTRAL_SEGMENT, CaptureLayout
from ava.data.zips import ZipPool
from ava.errors import UserError

# Keypoint ids run 0..273 in the Ava-256 keypoint set (SPEC §1.11).
KEYPOINT_COUNT = 274


class MemberError(Exception):
    """A member could not be loaded; carries the Problem to report."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass(frozen=True)
class Frame:
    """One row of `frame_list.csv`."""

    segment: str
    frame_id: str  # as written in the list

    @property
    def member(self) -> str:
        return member_frame(self.frame_id)


class CaptureReader:
    """Reads the decoder part of the capture folder `root`.

    `cameras`: camera ids to use, kept in the given order and filtered to those in the calibration;
    None means every camera in calibration order. `with_segmentation` / `with_keypoints` add those
    optional archives to the required files.
    """

    def __init__(
        self,
        root: str | Path,
        cameras: list[str] | None = None,
        with_segmentation: bool = False,
        with_keypoints: bool = False,
    ) -> None:
        self.layout = CaptureLayout(Path(root))
        self.with_segmentation = with_segmentation
        self.with_keypoints = with_keypoints
        self.zips = ZipPool()
        self._check_required(self.layout.required_files() + ([self.layout.keypoints_zip] if with_keypoints else []))
        calibration = read_calibration(self.layout.calibration)
        self.cameras: list[Camera] = self._select_cameras(calibration, cameras)
        per_camera = [self.layout.image_zip(c.camera_id) for c in self.cameras]
        if with_segmentation:
            per_camera += [self.layout.segmentation_zip(c.camera_id) for c in self.cameras]
        self._check_required(per_camera, advice="download the image asset, or select cameras that exist")
        self.frames = [Frame(seg, frame) for seg, frame in parse_frame_list(
            self.layout.frame_list.read_text(encoding="utf-8"), str(self.layout.frame_list))]
        self.problems: list[Problem] = []
        self.frame_ok, self.image_ok = self._inventory()
        self.neutral_frame = self._choose_neutral()
        self.zips.close()  # the parent process keeps no handles; each worker opens its own

    @property
    def camera_ids(self) -> list[str]:
        return [camera.camera_id for camera in self.cameras]

    def _check_required(self, paths: list[Path], advice: str = "download the capture's assets") -> None:
        missing = [path for path in paths if not path.is_file()]
        if missing:
            listed = ", ".join(str(path) for path in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise UserError(f"missing required file {listed}{more}; {advice}")

    def _select_cameras(self, calibration: list[Camera], wanted: list[str] | None) -> list[Camera]:
        if wanted is None:
            return calibration
        by_id = {camera.camera_id: camera for camera in calibration}
        selected = [by_id[str(camera)] for camera in wanted if str(camera) in by_id]
        if not selected:
            raise UserError(
                f"none of the cameras {list(wanted)[:8]} is in {self.layout.calibration} "
                f"(it has {sorted(by_id)[:8]}...)"
            )
        return selected

    def _member_names(self, path: Path, required: bool) -> set[str]:
        try:
            return self.zips.names(path)
        except BadMember as error:
            if required:
                raise UserError(f"{path}: {error}; download it again") from None
            self.problems.append(Problem(str(path), str(error)))
            return set()

    def _inventory(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame_ok [F] bool, image_ok [F,C] bool) from the zips' member lists."""
        frames = [frame.member for frame in self.frames]
        per_frame = [
            (self.layout.vertices_zip, names.vertices_member),
            (self.layout.head_pose_zip, names.head_pose_member),
            (self.layout.texture_zip, names.texture_member),
        ]
        if self.with_keypoints:
            per_frame.append((self.layout.keypoints_zip, names.keypoints_member))
        frame_ok = np.ones(len(frames), dtype=bool)
        for path, member_of in per_frame:
            present = self._member_names(path, required=True)
            has = np.array([member_of(frame) in present for frame in frames], dtype=bool)
            self._note_missing(path, [member_of(f) for f, ok in zip(frames, has) if not ok])
            frame_ok &= has
        image_ok = np.zeros((len(frames), len(self.cameras)), dtype=bool)
        for column, camera in enumerate(self.cameras):
            archives = [(self.layout.image_zip(camera.camera_id), names.image_member)]
            if self.with_segmentation:
                archives.append((self.layout.segmentation_zip(camera.camera_id), names.segmentation_member))
            has = np.ones(len(frames), dtype=bool)
            for path, member_of in archives:
                present = self._member_names(path, required=False)
                has_here = np.array([member_of(camera.camera_id, frame) in present for frame in frames], dtype=bool)
                if present:
                    self._note_missing(path, [member_of(camera.camera_id, f) for f, ok in zip(frames, has_here) if not ok])
                has &= has_here
            image_ok[:, column] = has
        return frame_ok, image_ok & frame_ok[:, None]

    def _note_missing(self, path: Path, members: list[str]) -> None:
        self.problems += [Problem(f"{path}/{member}", "listed in frame_list.csv but missing") for member in members]

    def _choose_neutral(self) -> Frame:
        """The first EXP_neutral_peak frame (lexicographic on the frame string) with a mesh and a texture."""
        candidates = sorted(
            (frame for frame, ok in zip(self.frames, self.frame_ok) if ok and frame.segment == NEUTRAL_SEGMENT),
            key=lambda frame: (frame.segment, frame.frame_id),
        )
        errors = []
        for frame in candidates:
            try:
                self.neutral_vertices = self.load_vertices(frame)
                self.neutral_texture = self.load_texture(frame)
                return frame
            except MemberError as error:
                errors.append(str(error))
        detail = f" (tried: {'; '.join(errors[:3])})" if errors else ""
        raise UserError(
            f"{self.layout.frame_list}: no {NEUTRAL_SEGMENT} frame has both a mesh and a texture{detail}; "
            "the capture cannot provide its neutral conditioning"
        )

    # --- loading one member ---------------------------------------------------------------

    def _read(self, path: Path, member: str) -> bytes:
        try:
            return self.zips.read(path, member)
        except BadMember as error:
            raise MemberError(Problem(f"{path}/{member}", str(error))) from None

    def _decode(self, path: Path, member: str, decoder, *args, **kwargs):
        data = self._read(path, member)
        try:
            return decoder(data, *args, **kwargs)
        except BadMember as error:
            raise MemberError(Problem(f"{path}/{member}", str(error))) from None

    def load_vertices(self, frame: Frame) -> np.ndarray:
        """Registered mesh vertices, f32 [V,3], head frame, mm."""
        path, member = self.layout.vertices_zip, names.vertices_member(frame.member)
        vertices = self._decode(path, member, parse_ply_vertices)
        if not np.all(np.isfinite(vertices)):
            raise MemberError(Problem(f"{path}/{member}", "mesh has non-finite vertices"))
        return vertices

    def load_texture(self, frame: Frame) -> np.ndarray:
        """Unwrapped texture, uint8 [T,T,3]."""
        return self._decode(self.layout.texture_zip, names.texture_member(frame.member), decode_image)

    def load_head_pose(self, frame: Frame) -> np.ndarray:
        """Head -> world transform, f32 [3,4]."""
        return self._decode(self.layout.head_pose_zip, names.head_pose_member(frame.member), parse_head_pose)

    def load_image(self, camera_id: str, frame: Frame, size: tuple[int, int]) -> np.ndarray:
        """Camera photo resized to `size` = (W,H), uint8 [H,W,3]."""
        path = self.layout.image_zip(camera_id)
        return self._decode(path, names.image_member(camera_id, frame.member), decode_image, size)

    def load_segmentation(self, camera_id: str, frame: Frame, size: tuple[int, int]) -> np.ndarray:
        """Part labels resized (nearest) to `size` = (W,H), uint8 [H,W]."""
        from PIL import Image

        path = self.layout.segmentation_zip(camera_id)
        member = names.segmentation_member(camera_id, frame.member)
        return self._decode(path, member, decode_image, size, mode="L", resample=Image.Resampling.NEAREST)

    def load_keypoints(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """World-frame keypoints as a dense table: values f32 [274,5] (x,y,z,confidence,inliers), valid bool [274]."""
        path, member = self.layout.keypoints_zip, names.keypoints_member(frame.member)
        raw = self._decode(path, member, parse_npy)
        if raw.size % 6 != 0 or not np.issubdtype(raw.dtype, np.number):
            raise MemberError(Problem(f"{path}/{member}", f"keypoints of shape {list(raw.shape)} are not rows of 6"))
        rows = raw.reshape(-1, 6).astype(np.float64)
        ids = rows[:, 0].round().astype(np.int64)
        if np.any((ids < 0) | (ids >= KEYPOINT_COUNT)):
            raise MemberError(Problem(f"{path}/{member}", f"keypoint id outside 0..{KEYPOINT_COUNT - 1}"))
        values = np.zeros((KEYPOINT_COUNT, 5), dtype=np.float32)
        valid = np.zeros(KEYPOINT_COUNT, dtype=bool)
        values[ids] = rows[:, 1:]
        valid[ids] = True
        return values, valid
