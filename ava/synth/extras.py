"""What `ava synth` writes beyond the original's layout, in the formats the release's datasheet gives
for them (docs/data-layout.md#beyond-the-original-code): per frame and camera a foreground mask, the
render's alpha as an 8-bit grey AVIF in `decoder/foreground_masks/cam{C}.zip`, and per camera the
empty backdrop its images were composited over, `{C}.avif` in
`decoder/background_image/background_image.zip`. A synthetic image is then exactly
`render + (1 - mask) * background` up to rounding and compression, as the datasheet describes
real ones.
"""

from __future__ import annotations

import numpy as np

from ava.data import layout as names
from ava.data.formats import encode_avif


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def foreground_masks(alphas: dict[str, np.ndarray]) -> dict[str, bytes]:
    """camera id -> AVIF of its mask, from the renders' alpha (camera id -> [H,W] in 0..1)."""
    return {camera: encode_avif(_to_uint8(255.0 * alpha)) for camera, alpha in alphas.items()}


def write_foreground_masks(writer, frame: str, masks: dict[str, bytes]) -> None:
    """Adds one frame's masks (from `foreground_masks`) to the capture's mask zips."""
    for camera, data in masks.items():
        path = writer.layout.foreground_mask_zip(camera)
        writer.add_member(path, names.foreground_mask_naming(camera).member(frame), data)


def write_backgrounds(writer, backdrops: dict[str, np.ndarray]) -> None:
    """Writes background_image.zip: camera id -> its backdrop [H,W,3] (0..255), as `{C}.avif`."""
    for camera, pixels in backdrops.items():
        writer.add_member(writer.layout.background_zip, names.background_member(camera), encode_avif(_to_uint8(pixels)))
