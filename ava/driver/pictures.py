"""Pictures of a driver at work: the five IR views beside the avatar they drive."""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def render_code(model, subject, dome_index: int, codes: torch.Tensor, device: torch.device,
                with_alpha: bool = False):
    """Renders [3,H,W] of the decoder with each code of `codes` [n,16,4,4], in the subject's dome
    view (camera and head pose of dome sample `dome_index`, the subject's own identity); with
    `with_alpha` also the primitives' coverage [1,H,W] of each."""
    from ava.data.collate import collate
    from ava.runtime.batch import to_device
    from ava.runtime.model import run_model

    batch = to_device(collate([subject.dome[dome_index]] * len(codes)), device)
    output = run_model(model, batch, code=codes.to(device), outputs=("ialpha",) if with_alpha else ())
    images = list(output["irgbrec"])
    return (images, list(output["ialpha"])) if with_alpha else images


def head_box(alpha: torch.Tensor, margin: float = 0.1) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the pixels the head covers (alpha [1,H,W] > 0.5), widened by
    `margin` of its size on every side; the whole image when nothing is covered."""
    rows = torch.nonzero(alpha[0].amax(dim=1) > 0.5).flatten()
    columns = torch.nonzero(alpha[0].amax(dim=0) > 0.5).flatten()
    height, width = alpha.shape[-2:]
    if len(rows) == 0 or len(columns) == 0:
        return 0, height, 0, width
    pad_rows = int(margin * (rows[-1] - rows[0] + 1)) + 1
    pad_columns = int(margin * (columns[-1] - columns[0] + 1)) + 1
    return (max(int(rows[0]) - pad_rows, 0), min(int(rows[-1]) + 1 + pad_rows, height),
            max(int(columns[0]) - pad_columns, 0), min(int(columns[-1]) + 1 + pad_columns, width))


def head_strip(rows: list[tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]],
               titles: list[str] | None = None) -> np.ndarray:
    """uint8 [H,W,3] of `rows`, each (IR views [5,S,S], renders [3,H,W] of one view, the head's
    coverage [1,H,W]): per row [5 views | the renders cropped to the head], enlarged by whole pixels.
    Every row is cropped to one box (the union of the rows' head boxes) and enlarged by one factor,
    so all rows have the same height and width and their panels line up. `titles` (one for the
    views, then one per render) name the columns in a band above the first row."""
    from ava.runtime.driving import headset_panel
    from ava.runtime.images import hstack, to_uint8, upscale_nearest, viewing_scale, vstack

    gap = 4
    boxes = [head_box(alpha) for _, _, alpha in rows]
    top, bottom = min(box[0] for box in boxes), max(box[1] for box in boxes)
    left, right = min(box[2] for box in boxes), max(box[3] for box in boxes)
    factor = viewing_scale(bottom - top, target=rows[0][0].shape[-1])
    lines, widths = [], []
    for views, images, _ in rows:
        crops = [upscale_nearest(to_uint8(image)[top:bottom, left:right], factor) for image in images]
        panels = [headset_panel(views, crops[0].shape[0])] + crops
        widths = [panel.shape[1] for panel in panels]
        lines.append(hstack(panels, gap=gap))
    enlarge = viewing_scale(lines[0].shape[0])
    picture = upscale_nearest(vstack(lines, gap=gap), enlarge)
    if titles is None:
        return picture
    if len(titles) != len(widths):
        raise ValueError(f"{len(titles)} titles for {len(widths)} columns")
    return np.concatenate([column_titles(titles, [width * enlarge for width in widths], gap * enlarge,
                                         picture.shape[1]), picture])


def column_titles(titles: list[str], widths: list[int], gap: int, total: int) -> np.ndarray:
    """uint8 [h,total,3]: a black band with each title centred over its column (columns of
    `widths` pixels, `gap` apart, from the left edge)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=int(np.clip(min(widths) // 10, 12, 28)))
    height = int(font.size * 1.6)
    band = Image.new("RGB", (total, height))
    draw = ImageDraw.Draw(band)
    left = 0
    for title, width in zip(titles, widths):
        draw.text((left + width / 2, height / 2), title, fill=(235, 235, 235), font=font, anchor="mm")
        left += width + gap
    return np.asarray(band)


@torch.no_grad()
def driven_row(model, subject, views: torch.Tensor, code: torch.Tensor, dome_index: int,
               device: torch.device, reference_code: torch.Tensor | None = None) -> np.ndarray:
    """uint8 [H, ...,3]: [5 IR views | render driven by `code` | the dome image of `dome_index`, or
    the render of `reference_code` there]."""
    from ava.runtime.driving import headset_panel
    from ava.runtime.images import hstack, to_uint8

    codes = code[None] if reference_code is None else torch.stack([code, reference_code.to(code.dtype)])
    renders = render_code(model, subject, dome_index, codes, device)
    rendered = renders[0]
    dome_image = subject.dome[dome_index]["image"] if reference_code is None else renders[1]
    height = dome_image.shape[-2]
    return hstack([headset_panel(views, height), to_uint8(rendered), to_uint8(dome_image)], gap=4)
