"""The model call of training, evaluation and rendering (docs/training.md argument order)."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F


def uv_size(model: torch.nn.Module) -> int:
    """Side of the UV maps the model was built for (DDP wrappers are looked through)."""
    return int(getattr(model, "module", model).decoder_assembler.idxim.shape[-1])


def fit_texture(texture: torch.Tensor, size: int) -> torch.Tensor:
    """[N,3,T,T] -> [N,3,size,size]: area averaging down, bilinear up (datasets may store larger
    textures than a small model uses, e.g. 1024^2 captures for a 256^2 model)."""
    if texture.shape[-1] == size:
        return texture
    if texture.shape[-1] > size:
        return F.interpolate(texture, size=(size, size), mode="area")
    return F.interpolate(texture, size=(size, size), mode="bilinear", align_corners=False)


def run_model(model: torch.nn.Module, batch: dict, *, warm: bool = False, outputs: Iterable[str] = (),
              target: dict | None = None, code: torch.Tensor | None = None) -> dict:
    """Renders `batch` (collated samples on the model's device).

    warm: the warm-up form (primitives on the ground-truth mesh, residuals off, primitive scale
    re-estimated). target: a batch-like dict whose `neut_avgtex` [N,3,T,T] and `neut_verts`
    [N,V,3] give the identity to render (default: the batch's own); the expression, camera,
    idindex and camindex always come from `batch`. code: an expression code [N,16,4,4] to decode
    instead of encoding the batch's mesh and texture (e.g. a headset driver's output).
    """
    target = batch if target is None else target
    size = uv_size(model)
    return model(
        batch["camrot"],
        batch["campos"],
        batch["focal"],
        batch["princpt"],
        batch["modelmatrix"],
        fit_texture(batch["avgtex"], size),
        batch["verts"],
        fit_texture(batch["neut_avgtex"], size),
        batch["neut_verts"],
        fit_texture(target["neut_avgtex"], size),
        target["neut_verts"],
        batch["pixelcoords"],
        batch["idindex"],
        batch["camindex"],
        running_avg_scale=warm,
        gt_geo=batch["verts"] if warm else None,
        residuals_weight=0.0 if warm else 1.0,
        output_set=set(outputs),
        expr_encoding=code,
    )


def encode_expression(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The expression code the decoder would decode for `batch`: the bottleneck's mean expr_mu
    [N,16,4,4] of the expression encoder's features (mesh and texture relative to the neutral)."""
    model = getattr(model, "module", model)
    size = uv_size(model)
    features = model.expr_encoder(batch["verts"], fit_texture(batch["avgtex"], size), batch["neut_verts"],
                                  fit_texture(batch["neut_avgtex"], size))
    return model.bottleneck(features)[1]
