"""The headset part of a capture, the release's `encoder/` folder (docs/data-layout.md): a frame
list and five IR camera zips. (The headset encoder network is ava.nn.headset_encoder.)

`EncoderCapture` reads single frames; `HeadsetDataset` gives training samples, the five views of
one headset frame as `[5,S,S]` with its segment and frame id. The datasheet names the members
`{frame:06d}.avif`, but the folder prefix inside the zips is unverified, so each archive's prefix
is detected from its member list (`layout.detect_naming`, as for the dome archives).

Synthetic captures (`ava synth`) also carry `encoder_truth.json` beside `encoder/` (not part of the
release layout): every headset frame's and dome frame's expression. Only evaluation (and the
oracle baseline of `ava train-driver --train.targets truth`) reads it (`read_encoder_truth`); no
other training code may.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ava.data.bad_data import SKIPPED_KEY, Problem, encode_problems
from ava.data.formats import BadMember, decode_image, member_frame, open_image, parse_frame_list
from ava.data.layout import ENCODER_CAMERAS, CaptureLayout, UnknownNaming, detect_naming
from ava.data.zips import ZipPool
from ava.errors import UserError
from ava.files import read_text

TRUTH_FILENAME = "encoder_truth.json"
TRUTH_FORMAT = "ava-encoder-truth"
TRUTH_VERSION = 2
FRAME_EXTENSIONS = ("avif", "png", "jpg")


class EncoderCapture:
    """Reads headset frames: `image(camera, frame_id)` -> uint8 [H,W] (IR) or [H,W,3]."""

    def __init__(self, root: str | Path) -> None:
        self.layout = CaptureLayout(Path(root))
        paths = [self.layout.encoder_frame_list] + [self.layout.encoder_zip(c) for c in ENCODER_CAMERAS]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise UserError(f"missing required file {', '.join(missing[:3])}; download the encoder asset group "
                            "(ava download --assets encoder)")
        self.frames = parse_frame_list(read_text(self.layout.encoder_frame_list),
                                       str(self.layout.encoder_frame_list))
        self.cameras = ENCODER_CAMERAS
        self.zips = ZipPool()
        self.naming = {}
        self.members: dict[str, set[str]] = {}
        for camera in self.cameras:
            path = self.layout.encoder_zip(camera)
            try:
                self.members[camera] = self.zips.names(path)
                self.naming[camera] = detect_naming(self.members[camera], extensions=FRAME_EXTENSIONS)
            except BadMember as error:
                raise UserError(f"{path}: {error}; download it again") from None
            except UnknownNaming as error:
                raise UserError(f"{path}: cannot tell how frames are named: {error}") from None
        self.zips.close()

    def member(self, camera: str, frame_id: str) -> str:
        return self.naming[camera].member(member_frame(frame_id))

    def image(self, camera: str, frame_id: str) -> np.ndarray:
        """Decoded frame in its own mode (greyscale IR stays single-channel); raises BadMember."""
        if camera not in self.naming:
            raise UserError(f"unknown headset camera {camera!r}; expected one of {', '.join(self.cameras)}")
        data = self.zips.read(self.layout.encoder_zip(camera), self.member(camera, frame_id))
        with open_image(data) as probe:
            mode = "L" if probe.mode in ("L", "I;16", "I") else "RGB"
        return decode_image(data, mode=mode)


class HeadsetDataset(Dataset):
    """The headset frames of one capture, five greyscale views each.

    root: the capture folder. size: every view is resized to size x size (Pillow's antialiased
    bicubic, as the dome images); None keeps the stored size, which must then be square and the
    same for all five cameras. segments: only frames of these segments. Frames whose member is
    missing from any of the five zips are left out at construction (`construction_problems`).

    Sample: headset f32 [5,S,S] (0..255, cameras in ENCODER_CAMERAS order), segment str,
    frameid str, index int (the frame's position in `frames`), skipped str (a frame that could not
    be decoded is replaced by its neighbour in the same segment, and noted here).
    """

    def __init__(self, root: str | Path, size: int | None = None, segments: Sequence[str] | None = None) -> None:
        self.capture = EncoderCapture(root)
        self.cameras = self.capture.cameras
        self.construction_problems: list[Problem] = []
        wanted = None if segments is None else set(segments)
        self.frames: list[tuple[str, str]] = []
        for segment, frame_id in self.capture.frames:
            if wanted is not None and segment not in wanted:
                continue
            absent = [camera for camera in self.cameras
                      if self.capture.member(camera, frame_id) not in self.capture.members[camera]]
            if absent:
                self.construction_problems += [
                    Problem(f"{self.capture.layout.encoder_zip(c)}/{self.capture.member(c, frame_id)}", "member is missing")
                    for c in absent]
                continue
            self.frames.append((segment, frame_id))
        if not self.frames:
            known = sorted({segment for segment, _ in self.capture.frames})
            raise UserError(f"{self.capture.layout.encoder} has no usable headset frame"
                            + (f" in segments {sorted(wanted)} (it has {', '.join(known)})" if wanted else ""))
        self.size = size
        self.failures: list[Problem] = []
        self._preloaded: torch.Tensor | None = None

    @property
    def root(self) -> Path:
        return self.capture.layout.root

    def segments(self) -> dict[str, list[int]]:
        """Segment name -> indices of its frames in recording order."""
        grouped: dict[str, list[int]] = {}
        for index, (segment, _) in enumerate(self.frames):
            grouped.setdefault(segment, []).append(index)
        return grouped

    def neutral_frame(self) -> int | None:
        """Index of the session's neutral frame: the middle frame of its first segment named
        `neutral...` or `EXP_neutral...` (the subject at rest, under this session's headset fit),
        or None when the session has no such segment."""
        for segment, indices in self.segments().items():
            if segment.lower().startswith(("neutral", "exp_neutral")):
                return indices[len(indices) // 2]
        return None

    def __len__(self) -> int:
        return len(self.frames)

    def load_views(self, index: int) -> torch.Tensor:
        """uint8 [5,S,S] of frame `index`; raises BadMember when a view cannot be decoded."""
        if self._preloaded is not None:
            return self._preloaded[index]
        frame_id = self.frames[index][1]
        views = []
        for camera in self.cameras:
            data = self.capture.zips.read(self.capture.layout.encoder_zip(camera), self.capture.member(camera, frame_id))
            size = None if self.size is None else (self.size, self.size)
            views.append(decode_image(data, size=size, mode="L"))
        shapes = {view.shape for view in views}
        if len(shapes) != 1 or views[0].shape[0] != views[0].shape[1]:
            raise UserError(f"{self.capture.layout.encoder}: the headset views have sizes {sorted(shapes)}; "
                            "pass a size so that they are resized to one square size")
        return torch.from_numpy(np.stack(views))

    def views(self, index: int) -> torch.Tensor:
        """uint8 [5,S,S] of frame `index`, or of its nearest decodable neighbour in the segment."""
        return self._load_or_replace(index)[0]

    def preload(self, progress=None) -> None:
        """Decodes every frame once and keeps them in memory (uint8: 5 S^2 bytes a frame);
        `progress(count)` is called after each frame; a second call does nothing."""
        if self._preloaded is not None:
            if progress is not None:
                progress(len(self))
            return
        frames = []
        for index in range(len(self)):
            frames.append(self.views(index))
            if progress is not None:
                progress(1)
        self._preloaded = torch.stack(frames)

    def _load_or_replace(self, index: int) -> tuple[torch.Tensor, list[Problem]]:
        segment = self.frames[index][0]
        skipped: list[Problem] = []
        # Neighbours in the same segment, nearest first: a replacement shows a similar expression.
        for offset in [0] + [sign * step for step in range(1, len(self)) for sign in (-1, 1)]:
            candidate = index + offset
            if not 0 <= candidate < len(self) or self.frames[candidate][0] != segment:
                continue
            try:
                return self.load_views(candidate), skipped
            except BadMember as error:
                problem = Problem(f"{self.capture.layout.encoder} frame {self.frames[candidate][1]}", str(error))
                skipped.append(problem)
                self.failures.append(problem)
        raise UserError(f"{self.capture.layout.encoder}: no frame of segment {segment} can be decoded; first problems: "
                        + "; ".join(str(problem) for problem in skipped[:3]))

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"headset frame {index} out of range for {len(self)} frames")
        index %= len(self)
        views, skipped = self._load_or_replace(index)
        segment, frame_id = self.frames[index]
        return {"headset": views.float(), "segment": segment, "frameid": frame_id, "index": index,
                SKIPPED_KEY: encode_problems(skipped)}


# --- ground truth of synthetic headset sessions ---------------------------------------------------


def truth_path(capture_root: str | Path) -> Path:
    """`<capture>/encoder_truth.json` (synthetic captures only)."""
    return Path(capture_root) / TRUTH_FILENAME


def format_encoder_truth(document: dict) -> str:
    """The truth document (format version 2): `controls` (the expression controls' names),
    `frames` (per headset frame in frame-list order: segment, frame_id, expression {control:
    value}, slip {rotation_deg, translation_mm} of the headset relative to its fit), `dome_frames`
    (per dome frame: segment, frame_id, expression), `rig` (camera poses in the head frame at the
    session's start) and `infrared` (the subject's IR gain and albedo)."""
    return json.dumps({"format": TRUTH_FORMAT, "format_version": TRUTH_VERSION, **document}, indent=1) + "\n"


@dataclass
class EncoderTruth:
    """What each headset frame of a synthetic capture shows.

    controls: the expression controls' names; expression: headset frame id -> f64 [C] values in
    `controls` order; segment: headset frame id -> segment; dome_expression: dome frame id -> [C];
    dome_segment: dome frame id -> segment; slip: headset frame id -> [6] (rotation in degrees,
    translation in mm); rig, infrared: as written.
    """

    controls: tuple[str, ...]
    expression: dict[str, np.ndarray]
    segment: dict[str, str]
    dome_expression: dict[str, np.ndarray]
    dome_segment: dict[str, str]
    slip: dict[str, np.ndarray]
    rig: dict
    infrared: dict

    def values(self, vector: np.ndarray) -> dict[str, float]:
        """{control: value} of an expression vector [C]."""
        return {name: float(value) for name, value in zip(self.controls, vector)}


def read_encoder_truth(capture_root: str | Path) -> EncoderTruth:
    """Reads `<capture>/encoder_truth.json`; a UserError when it is absent (real captures have none)."""
    path = truth_path(capture_root)
    if not path.is_file():
        raise UserError(f"{path} does not exist: only synthetic captures (ava synth, with the headset on) carry "
                        "the headset ground truth needed for this evaluation")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != TRUTH_FORMAT:
            raise ValueError(f"format is {document.get('format')!r}")
        if document.get("format_version") != TRUTH_VERSION:
            raise ValueError(f"format version {document.get('format_version')}, this ava reads {TRUTH_VERSION}")
        controls = tuple(str(name) for name in document["controls"])

        def vector(row: dict) -> np.ndarray:
            return np.array([float(row["expression"].get(name, 0.0)) for name in controls])

        frames, dome = document["frames"], document["dome_frames"]
        return EncoderTruth(
            controls=controls,
            expression={str(row["frame_id"]): vector(row) for row in frames},
            segment={str(row["frame_id"]): str(row["segment"]) for row in frames},
            dome_expression={str(row["frame_id"]): vector(row) for row in dome},
            dome_segment={str(row["frame_id"]): str(row["segment"]) for row in dome},
            slip={str(row["frame_id"]): np.array(row["slip"]["rotation_deg"] + row["slip"]["translation_mm"], dtype=float)
                  for row in frames},
            rig=dict(document.get("rig", {})),
            infrared=dict(document.get("infrared", {})),
        )
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise UserError(f"{path} is not a headset ground truth file this ava reads ({error}); regenerate the "
                        "synthetic set") from None
