"""Pictures of a driver at work: the five IR views beside the avatar they drive."""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def render_code(model, subject, dome_index: int, codes: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Renders [3,H,W] of the decoder with each code of `codes` [n,16,4,4], in the subject's dome
    view (camera and head pose of dome sample `dome_index`, the subject's own identity)."""
    from ava.runtime.batch import collate, to_device
    from ava.runtime.model import run_model

    batch = to_device(collate([subject.dome[dome_index]] * len(codes)), device)
    return list(run_model(model, batch, code=codes.to(device))["irgbrec"])


@torch.no_grad()
def driven_row(model, subject, views: torch.Tensor, code: torch.Tensor, dome_index: int,
               device: torch.device) -> np.ndarray:
    """uint8 [H, ...,3]: [5 IR views | render driven by `code` | the dome image of `dome_index`]."""
    from ava.runtime.headset import headset_panel
    from ava.runtime.images import hstack, to_uint8

    rendered = render_code(model, subject, dome_index, code[None], device)[0]
    dome_image = subject.dome[dome_index]["image"]
    height = dome_image.shape[-2]
    return hstack([headset_panel(views, height), to_uint8(rendered), to_uint8(dome_image)], gap=4)
