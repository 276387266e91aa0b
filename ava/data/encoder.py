"""The encoder (headset) part of a capture (SPEC §1.12): a frame list and five IR camera zips.

Nothing in training reads it. The datasheet names the members `{frame:06d}.avif`, but the folder
prefix inside the zips is unverified, so each archive's prefix is detected from its member list
(`layout.detect_naming`, as for the dome archives).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ava.data.formats import BadMember, decode_image, member_frame, parse_frame_list
from ava.data.layout import ENCODER_CAMERAS, CaptureLayout, UnknownNaming, detect_naming
from ava.data.zips import ZipPool
from ava.errors import UserError
from ava.files import read_text

FRAME_EXTENSIONS = ("avif", "png", "jpg")


class EncoderCapture:
    """Reads headset frames: `image(camera, frame_id)` -> uint8 [H,W] (IR) or [H,W,3]."""

    def __init__(self, root: str | Path) -> None:
        self.layout = CaptureLayout(Path(root))
        paths = [self.layout.encoder_frame_list] + [self.layout.encoder_zip(c) for c in ENCODER_CAMERAS]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise UserError(f"missing required file {', '.join(missing[:3])}; download the encoder asset")
        self.frames = parse_frame_list(read_text(self.layout.encoder_frame_list),
                                       str(self.layout.encoder_frame_list))
        self.cameras = ENCODER_CAMERAS
        self.zips = ZipPool()
        self.naming = {}
        for camera in self.cameras:
            path = self.layout.encoder_zip(camera)
            try:
                self.naming[camera] = detect_naming(self.zips.names(path), extensions=FRAME_EXTENSIONS)
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
        try:
            with Image.open(io.BytesIO(data)) as probe:
                mode = "L" if probe.mode in ("L", "I;16", "I") else "RGB"
        except (OSError, ValueError, SyntaxError) as error:  # what PIL raises for bytes it cannot identify
            raise BadMember(f"image cannot be decoded: {error}") from None
        return decode_image(data, mode=mode)
