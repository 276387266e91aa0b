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


def head_strip(rows: list[tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]]) -> np.ndarray:
    """uint8 [H,W,3] of `rows`, each (IR views [5,S,S], renders [3,H,W] of one view, the head's
    coverage [1,H,W]): per row [5 views | the renders cropped to the head], enlarged by whole pixels.
    Every row is cropped to one box (the union of the rows' head boxes) and enlarged by one factor,
    so all rows have the same height and width and their panels line up."""
    from ava.runtime.driving import headset_panel
    from ava.runtime.images import hstack, to_uint8, upscale_nearest, viewing_scale, vstack

    boxes = [head_box(alpha) for _, _, alpha in rows]
    top, bottom = min(box[0] for box in boxes), max(box[1] for box in boxes)
    left, right = min(box[2] for box in boxes), max(box[3] for box in boxes)
    factor = viewing_scale(bottom - top, target=rows[0][0].shape[-1])
    lines = []
    for views, images, _ in rows:
        crops = [upscale_nearest(to_uint8(image)[top:bottom, left:right], factor) for image in images]
        lines.append(hstack([headset_panel(views, crops[0].shape[0])] + crops, gap=4))
    return upscale_nearest(vstack(lines, gap=4), viewing_scale(lines[0].shape[0]))


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
