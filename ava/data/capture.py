"""One capture's decoder data: what exists, and loading one member at a time (docs/data-layout.md).

Construction checks the required files (a clear error naming the missing ones), reads the
calibration and the frame list, and takes an inventory of the zips' member lists, so that frames
whose members are missing (the ~0.1% "dropped frames") are never asked for. Each archive's member
prefix is detected from its list, so archives repacked under another folder still read. Members
that exist but cannot be decoded are found only when loaded; the dataset skips those.

Policy for a camera's archive that is missing (a size tier without it) or unreadable (a truncated
download): that camera is skipped and an `ArchiveProblem` records it, both cases alike; the
training command prints these before it starts. A per-frame archive (meshes, textures, head
poses) that is missing or unreadable stops construction, since no sample could be built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ava.data import layout as names
from ava.data.bad_data import ArchiveProblem, Problem
from ava.data.calibration import WORLD_ORIGIN, Camera, check_in_front, read_calibration
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
from ava.files import read_text

# Keypoint ids run 0..273 in the Ava-256 keypoint set (docs/data-layout.md).
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
        # Whether the head is in front of the cameras is checked below, with a real head pose.
        calibration = read_calibration(self.layout.calibration, in_front_of=None)
        self.cameras: list[Camera] = self._select_cameras(calibration, cameras)
        self.frames = [Frame(seg, frame) for seg, frame in parse_frame_list(
            read_text(self.layout.frame_list), str(self.layout.frame_list))]
        self.problems: list[Problem] = []
        self.archive_problems: list[ArchiveProblem] = []
        self._naming: dict[Path, names.MemberNaming] = {}
        self.frame_ok, self.image_ok = self._inventory()
        self.neutral_frame = self._choose_neutral()
        self._check_cameras_face_the_head()
        self.zips.close()  # the parent process keeps no handles; each worker opens its own

    @property
    def camera_ids(self) -> list[str]:
        return [camera.camera_id for camera in self.cameras]

    @property
    def usable_camera_ids(self) -> list[str]:
        """The cameras with at least one loadable sample (skipped archives have none)."""
        return [camera.camera_id for camera, used in zip(self.cameras, self.image_ok.any(axis=0)) if used]

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

    def _archive_members(self, path: Path, expected: names.MemberNaming, camera: str | None) -> set[str] | None:
        """The member names of `path`, its naming recorded; None when a camera archive is unusable.

        A per-frame archive (`camera` None) that cannot be read stops construction; a camera's
        archive that is missing or unreadable is recorded and that camera skipped (one policy for
        both: a size tier's missing file and a truncated download cost the same camera).
        """
        try:
            present = self.zips.names(path)
            naming = names.detect_naming(present, expected)
        except (BadMember, names.UnknownNaming) as error:
            reason = str(error) if isinstance(error, BadMember) else f"cannot tell how frames are named: {error}"
            if camera is None:
                raise UserError(f"{path}: {reason}; download it again") from None
            self.problems.append(Problem(str(path), reason))
            self.archive_problems.append(ArchiveProblem(str(path), reason, len(self.frames), len(self.frames), camera))
            return None
        if naming != expected:
            self.archive_problems.append(ArchiveProblem(
                str(path), f"members are named {naming.member('NNNNNN')!r}, not {expected.member('NNNNNN')!r}; "
                "read from there", 0, len(self.frames)))
        self._naming[path] = naming
        return present

    def _inventory(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame_ok [F] bool, image_ok [F,C] bool) from the zips' member lists."""
        per_frame = [
            (self.layout.vertices_zip, names.VERTICES_NAMING),
            (self.layout.head_pose_zip, names.HEAD_POSE_NAMING),
            (self.layout.texture_zip, names.TEXTURE_NAMING),
        ]
        if self.with_keypoints:
            per_frame.append((self.layout.keypoints_zip, names.KEYPOINTS_NAMING))
        frame_ok = np.ones(len(self.frames), dtype=bool)
        for path, expected in per_frame:
            frame_ok &= self._frames_present(path, self._archive_members(path, expected, camera=None))
        image_ok = np.zeros((len(self.frames), len(self.cameras)), dtype=bool)
        for column, camera in enumerate(self.cameras):
            archives = [(self.layout.image_zip(camera.camera_id), names.image_naming(camera.camera_id))]
            if self.with_segmentation:
                archives.append((self.layout.segmentation_zip(camera.camera_id),
                                 names.segmentation_naming(camera.camera_id)))
            has = np.ones(len(self.frames), dtype=bool)
            for path, expected in archives:
                present = self._archive_members(path, expected, camera=camera.camera_id)
                if present is None:
                    has[:] = False
                else:
                    has &= self._frames_present(path, present)
            image_ok[:, column] = has
        return frame_ok, image_ok & frame_ok[:, None]

    def _frames_present(self, path: Path, present: set[str]) -> np.ndarray:
        """[F] bool: which listed frames have their member in `path`; notes the missing ones."""
        members = [self._naming[path].member(frame.member) for frame in self.frames]
        has = np.array([member in present for member in members], dtype=bool)
        missing = [member for member, ok in zip(members, has) if not ok]
        self.problems += [Problem(f"{path}/{member}", "listed in frame_list.csv but missing") for member in missing]
        if missing:
            self.archive_problems.append(ArchiveProblem(
                str(path), f"lacks {len(missing)} members listed in frame_list.csv (e.g. {missing[0]})",
                len(missing), len(self.frames)))
        return has

    def _check_cameras_face_the_head(self) -> None:
        try:
            head = self.load_head_pose(self.neutral_frame)[:, 3]
            what = f"the head (frame {self.neutral_frame.frame_id})"
        except MemberError:
            head, what = WORLD_ORIGIN, "the world origin"
        check_in_front(self.cameras, head, str(self.layout.calibration), what)

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

    def member_name(self, path: Path, frame: Frame) -> str:
        """The name of `frame`'s member in the archive at `path`, as that archive names its members."""
        return self._naming[path].member(frame.member)

    def _decode(self, path: Path, member: str, decoder, *args, **kwargs):
        data = self._read(path, member)
        try:
            return decoder(data, *args, **kwargs)
        except BadMember as error:
            raise MemberError(Problem(f"{path}/{member}", str(error))) from None
        except Exception as error:  # noqa: BLE001 - a decoder's unforeseen failure is still one bad member
            reason = f"cannot be decoded ({type(error).__name__}: {error})"
            raise MemberError(Problem(f"{path}/{member}", reason)) from None

    def load_vertices(self, frame: Frame) -> np.ndarray:
        """Registered mesh vertices, f32 [V,3], head frame, mm."""
        path = self.layout.vertices_zip
        member = self.member_name(path, frame)
        vertices = self._decode(path, member, parse_ply_vertices)
        if not np.all(np.isfinite(vertices)):
            raise MemberError(Problem(f"{path}/{member}", "mesh has non-finite vertices"))
        return vertices

    def load_texture(self, frame: Frame) -> np.ndarray:
        """Unwrapped texture, uint8 [T,T,3]."""
        return self._decode(self.layout.texture_zip, self.member_name(self.layout.texture_zip, frame), decode_image)

    def load_head_pose(self, frame: Frame) -> np.ndarray:
        """Head -> world transform, f32 [3,4]."""
        path = self.layout.head_pose_zip
        return self._decode(path, self.member_name(path, frame), parse_head_pose)

    def load_image(self, camera_id: str, frame: Frame, size: tuple[int, int]) -> np.ndarray:
        """Camera photo resized to `size` = (W,H), uint8 [H,W,3]."""
        path = self.layout.image_zip(camera_id)
        return self._decode(path, self.member_name(path, frame), decode_image, size)

    def load_segmentation(self, camera_id: str, frame: Frame, size: tuple[int, int]) -> np.ndarray:
        """Part labels resized (nearest) to `size` = (W,H), uint8 [H,W]."""
        from PIL import Image

        path = self.layout.segmentation_zip(camera_id)
        member = self.member_name(path, frame)
        return self._decode(path, member, decode_image, size, mode="L", resample=Image.Resampling.NEAREST)

    def load_keypoints(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """World-frame keypoints as a dense table: values f32 [274,5] (x,y,z,confidence,inliers), valid bool [274]."""
        path = self.layout.keypoints_zip
        member = self.member_name(path, frame)
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
