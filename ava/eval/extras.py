"""`ava eval` with the release's background images and foreground masks, where a capture has them
(docs/data-layout.md#beyond-the-original-code).

- Background: a camera's recorded empty backdrop (`background_image.zip`) is what a held-out
  camera's renders are composited over, instead of the plate fitted to one of its frames; the
  metrics then measure the head alone against a background that is known, not estimated. Each
  measured image records which it used (`real` or `plate`), and the summary says how many.
- Mask: `psnr_mask` is the PSNR inside the frame's foreground mask (pixels whose mask is at least
  one half: the person, hair and shoulders included, which the tracked mesh's silhouette behind
  `psnr_head` leaves out), pooled over the images that have a mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ava.runtime.metrics import psnr_from_mse

REAL, PLATE = "real", "plate"
MASK_THRESHOLD = 0.5


class ReleaseImages:
    """Backgrounds and masks of the captures of one dataset folder, as tensors on `device`."""

    def __init__(self, dataset_dir: Path, device, use_backgrounds: bool = True) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.device = device
        self.use_backgrounds = use_backgrounds
        self._captures: dict = {}

    def _capture(self, identity: str):
        from ava.data.extras import CaptureExtras

        if identity not in self._captures:
            self._captures[identity] = CaptureExtras(self.dataset_dir / identity)
        return self._captures[identity]

    def background(self, identity: str, camera: str, height: int, width: int) -> torch.Tensor | None:
        """The camera's recorded backdrop [3,H,W] (0..255), or None (none recorded, or not wanted)."""
        if not self.use_backgrounds:
            return None
        pixels = self._capture(identity).background(camera, (width, height))
        return None if pixels is None else torch.from_numpy(pixels).to(self.device)

    def mask(self, identity: str, camera: str, frame: str, height: int, width: int) -> torch.Tensor | None:
        """bool [H,W]: the frame's foreground (mask >= 0.5), or None where there is no mask."""
        mask = self._capture(identity).mask(camera, frame, (width, height))
        return None if mask is None else torch.from_numpy(mask[0] >= MASK_THRESHOLD).to(self.device)

    def problems(self) -> list[str]:
        return [problem for capture in self._captures.values() for problem in capture.problems]


@dataclass
class MaskErrors:
    """Summed squared error and channel-pixel count inside foreground masks (pooled PSNR)."""

    squared: float = 0.0
    pixels: int = 0

    @staticmethod
    def of(rendered: torch.Tensor, image: torch.Tensor, mask: torch.Tensor | None) -> "MaskErrors | None":
        """rendered, image [3,H,W] (0..255), mask bool [H,W] or None."""
        if mask is None:
            return None
        return MaskErrors(float(((rendered - image) ** 2)[:, mask].sum()), int(mask.sum()) * image.shape[0])

    def psnr(self) -> float | None:
        return psnr_from_mse(self.squared / self.pixels) if self.pixels else None


def summarise(views) -> dict:
    """{"psnr_mask": pooled PSNR inside the masks of the views that have one (None if none)}."""
    total = MaskErrors()
    for view in views:
        if view.mask_errors is not None:
            total = MaskErrors(total.squared + view.mask_errors.squared, total.pixels + view.mask_errors.pixels)
    return {"psnr_mask": total.psnr()}


def background_summary(views) -> dict:
    """{"real": cameras composited over their recorded background, "plate": over a fitted plate},
    counted per (identity, camera)."""
    used: dict[tuple[str, str], str] = {(view.identity, view.camera): view.background for view in views}
    return {kind: sum(1 for value in used.values() if value == kind) for kind in (REAL, PLATE)}


def background_note(views) -> str:
    counts = background_summary(views)
    total = counts[REAL] + counts[PLATE]
    masked = sum(view.mask_errors is not None for view in views)
    return (f"backgrounds: recorded (background_image.zip) for {counts[REAL]} of {total} cameras, a plate fitted "
            f"to one frame for {counts[PLATE]}; foreground masks for {masked} of {len(views)} images")
