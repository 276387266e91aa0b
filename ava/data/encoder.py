"""The encoder (headset) part of a capture (SPEC §1.12): a frame list and five IR camera zips.

Nothing in training reads it. The datasheet names the members `{frame:06d}.avif`, but the folder
prefix inside the zips is unverified, so each archive's prefix is detected from its member list.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ava.data.formats import BadMember, decode_image, member_frame, parse_frame_list
from ava.data.layout import ENCODER_CAMERAS, CaptureLayout
from ava.data.zips import ZipPool
from ava.errors import UserError

_FRAME_MEMBER = re.compile(r"^(.*?)(\d{6})\.(avif|png|jpg)$")


def detect_member_prefix(names: list[str], source: str) -> tuple[str, str]:
    """(prefix, extension) shared by the frame members of an archive, e.g. ("cam-cyclop/", "avif")."""
    patterns = {(m.group(1), m.group(3)) for m in map(_FRAME_MEMBER.match, names) if m}
    if len(patterns) != 1:
        found = sorted(patterns)[:4] if patterns else "no member named like 000123.avif"
        raise UserError(f"{source}: cannot tell how frames are named ({found})")
    return patterns.pop()


class EncoderCapture:
    """Reads headset frames: `image(camera, frame_id)` -> uint8 [H,W] (IR) or [H,W,3]."""

    def __init__(self, root: str | Path) -> None:
        self.layout = CaptureLayout(Path(root))
        paths = [self.layout.encoder_frame_list] + [self.layout.encoder_zip(c) for c in ENCODER_CAMERAS]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise UserError(f"missing required file {', '.join(missing[:3])}; download the encoder asset")
        self.frames = parse_frame_list(self.layout.encoder_frame_list.read_text(encoding="utf-8"),
                                       str(self.layout.encoder_frame_list))
        self.cameras = ENCODER_CAMERAS
        self.zips = ZipPool()
        self.naming = {}
        for camera in self.cameras:
            path = self.layout.encoder_zip(camera)
            try:
                names = sorted(self.zips.names(path))
            except BadMember as error:
                raise UserError(f"{path}: {error}; download it again") from None
            self.naming[camera] = detect_member_prefix(names, str(path))
        self.zips.close()

    def member(self, camera: str, frame_id: str) -> str:
        prefix, extension = self.naming[camera]
        return f"{prefix}{member_frame(frame_id)}.{extension}"

    def image(self, camera: str, frame_id: str) -> np.ndarray:
        """Decoded frame in its own mode (greyscale IR stays single-channel); raises BadMember."""
        if camera not in self.naming:
            raise UserError(f"unknown headset camera {camera!r}; expected one of {', '.join(self.cameras)}")
        data = self.zips.read(self.layout.encoder_zip(camera), self.member(camera, frame_id))
        with Image.open(io.BytesIO(data)) as probe:
            mode = "L" if probe.mode in ("L", "I;16", "I") else "RGB"
        return decode_image(data, mode=mode)
