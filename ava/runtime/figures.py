"""Labelled pictures drawn with matplotlib: its object API on the Agg canvas (no pyplot state, no
GUI backend, safe in threads and on machines without a display), saved atomically as PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

DPI = 100
MIN_PANEL_PIXELS = 480  # small images (synthetic captures are 83x128) are shown enlarged to this height


def figure(width_pixels: float, height_pixels: float, layout: str | None = "constrained"):
    """A matplotlib Figure of about this many pixels (at DPI), on the Agg canvas; the constrained
    layout keeps titles and legends inside it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    result = Figure(figsize=(width_pixels / DPI, height_pixels / DPI), dpi=DPI, layout=layout)
    FigureCanvasAgg(result)
    return result


def panel_scale(height: int) -> float:
    """Display scale of an image `height` pixels tall: 1, or more for small images."""
    return max(1.0, MIN_PANEL_PIXELS / max(height, 1))


def show_image(axes, image: np.ndarray, title: str | None = None, **options) -> None:
    """uint8 [H,W,3] or [H,W] image on `axes`, pixel-exact (x right, y down, pixel centres at
    integers, as ava's pixel coordinates), without ticks."""
    if image.ndim == 2:
        options = {"cmap": "gray", "vmin": 0, "vmax": 255, **options}
    axes.imshow(image, interpolation="nearest", extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5),
                **options)
    axes.set_xlim(-0.5, image.shape[1] - 0.5)
    axes.set_ylim(image.shape[0] - 0.5, -0.5)
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=9)


def figure_png(result) -> bytes:
    """PNG bytes of a Figure."""
    buffer = io.BytesIO()
    result.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def save_figure(result, path: str | Path) -> Path:
    """Writes the Figure as PNG atomically (a crash leaves the old file or the new one)."""
    from ava.files import write_atomically

    write_atomically(Path(path), figure_png(result))
    return Path(path)


def image_grid(rows: list[list[tuple[np.ndarray, str]]], title: str | None = None):
    """A Figure of uint8 images in a grid, each with its title; rows may differ in length."""
    columns = max(len(row) for row in rows)
    height, width = rows[0][0][0].shape[:2]
    scale = panel_scale(height) * 0.6
    result = figure(columns * (width * scale + 12), len(rows) * (height * scale + 40) + (30 if title else 8))
    grid = result.add_gridspec(len(rows), columns)
    for row_index, row in enumerate(rows):
        for column, (image, label) in enumerate(row):
            show_image(result.add_subplot(grid[row_index, column]), image, label)
    if title:
        result.suptitle(title, fontsize=10)
    return result
