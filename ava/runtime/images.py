"""Turning rendered tensors into pictures: uint8 conversion, error images, strips, PNG files."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from einops import rearrange

# Absolute error (0..255 units) is multiplied by this in error images, so an error of 64 is white.
ERROR_GAIN = 4.0
SEPARATOR = 2  # pixels of black between the panels of a strip
# Training pictures are enlarged until a panel is this many pixels high: the demo renders 41x64 (WxH)
# images, too small to judge in an image viewer.
VIEW_HEIGHT = 256


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3,H,W] float 0..255 -> uint8 [H,W,3] (rounded, clipped)."""
    return rearrange(image.detach().float().clamp(0, 255).round().to(torch.uint8), "c h w -> h w c").cpu().numpy()


def error_image(target: torch.Tensor, rendered: torch.Tensor) -> torch.Tensor:
    """[3,H,W] absolute error x ERROR_GAIN, averaged over channels and shown grey (0..255)."""
    error = (target - rendered).abs().mean(dim=0, keepdim=True) * ERROR_GAIN
    return error.expand(3, -1, -1)


def hstack(panels: Sequence[np.ndarray], gap: int = SEPARATOR) -> np.ndarray:
    """uint8 [H,W_i,3] panels side by side with `gap` black columns between them."""
    height = max(panel.shape[0] for panel in panels)
    spacer = np.zeros((height, gap, 3), dtype=np.uint8)
    parts = []
    for index, panel in enumerate(panels):
        if index:
            parts.append(spacer)
        if panel.shape[0] < height:
            panel = np.pad(panel, ((0, height - panel.shape[0]), (0, 0), (0, 0)))
        parts.append(panel)
    return np.concatenate(parts, axis=1)


def vstack(rows: Sequence[np.ndarray], gap: int = SEPARATOR) -> np.ndarray:
    """uint8 rows one above the other (padded to the widest) with `gap` black rows between."""
    width = max(row.shape[1] for row in rows)
    parts = []
    for index, row in enumerate(rows):
        if index:
            parts.append(np.zeros((gap, width, 3), dtype=np.uint8))
        parts.append(np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))))
    return np.concatenate(parts, axis=0)


def viewing_scale(height: int, target: int = VIEW_HEIGHT) -> int:
    """The integer factor that makes panels `height` pixels high at least `target` high (1 if they are)."""
    return max(1, -(-target // max(height, 1)))


def upscale_nearest(image: np.ndarray, factor: int) -> np.ndarray:
    """uint8 [H,W,3] -> [H*factor,W*factor,3], each pixel a factor x factor block (no smoothing,
    so the pixels the model rendered stay visible as they are)."""
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Writes uint8 [H,W,3] as PNG atomically (a crash leaves the old file or the new one)."""
    from PIL import Image

    from ava.files import write_atomically

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    write_atomically(Path(path), buffer.getvalue())
    return Path(path)
