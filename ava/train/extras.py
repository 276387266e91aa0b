"""`ava train` with the release's background images and foreground masks
(docs/training.md#real-backgrounds-and-foreground-masks).

- `--train.background real`: a sample whose camera has a recorded empty backdrop
  (`background_image.zip`) is composited over that backdrop instead of the learned background
  model's row (`rgb + (1 - alpha) * backdrop`), so the decoder cannot paint background into the head
  or head into the background; samples of cameras without one keep the learned background. The
  learned background model stays the default (the original's).
- `--train.masked-loss`: the image L1 term is averaged over the pixels inside the frame's
  foreground mask (weighted by the mask's 0..1 value) instead of the whole image; a sample without
  a mask counts every pixel.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from ava.errors import UserError
from ava.runtime.model import run_model
from ava.train.losses import LOSS_OUTPUTS, loss_terms


def wanted(config) -> tuple[bool, bool]:
    """(recorded backgrounds, foreground masks) that `config` (a TrainConfig) asks for."""
    return config.train.background == "real", bool(config.train.masked_loss)


def training_dataset(config, dataset, say: Callable = print):
    """`dataset` with backgrounds and masks added to its samples when the config asks for them
    (ava.data.extras.WithExtras); UserError when no capture has what is asked for."""
    from ava.data.extras import WithExtras, coverage

    background, mask = wanted(config)
    if not (background or mask):
        return dataset
    captures, with_background, with_mask = coverage(dataset, list(dataset.camera_ids))
    if background and not with_background:
        raise UserError("--train.background real needs recorded backgrounds, and no capture has "
                        "decoder/background_image/background_image.zip; download the background_image group "
                        "(4TB tier) or leave --train.background learned")
    if mask and not with_mask:
        raise UserError("--train.masked-loss needs foreground masks, and no capture has decoder/foreground_masks/; "
                        "download the foreground_masks group (4TB tier)")
    parts = []
    if background:
        parts.append(f"recorded backgrounds for {with_background} of {captures} captures (the learned background "
                     "elsewhere)")
    if mask:
        parts.append(f"foreground masks for {with_mask} of {captures} captures (the image loss inside them)")
    say("data: " + "; ".join(parts), highlight=False)
    return WithExtras(dataset, background=background, mask=mask)


def release_terms(network: torch.nn.Module, batch: dict, *, warm: bool, vertmean: torch.Tensor, vertstd: float,
                  background: bool, mask: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    """`decoder_terms` (ava.train.step) with the recorded background and/or the masked image loss.

    batch as WithExtras gives it: background [N,3,H,W], background_valid bool [N], fgmask [N,1,H,W]
    (0..1), fgmask_valid bool [N].
    """
    outputs = set(LOSS_OUTPUTS) | ({"ialpha", "bg"} if background else set())
    output = run_model(network, batch, warm=warm, outputs=outputs)
    if background and output.get("bg") is not None:
        alpha = output["ialpha"]
        # The learned background's contribution swapped for the recorded one where there is one.
        recorded = output["irgbrec"] + (1.0 - alpha) * (batch["background"] - output["bg"])
        valid = batch["background_valid"].view(-1, 1, 1, 1).to(torch.bool)
        output = {**output, "irgbrec": torch.where(valid, recorded, output["irgbrec"])}
    terms = loss_terms(output, batch, vertmean, vertstd)
    if mask:
        weight = torch.where(batch["fgmask_valid"].view(-1, 1, 1, 1).to(torch.bool), batch["fgmask"],
                             torch.ones_like(batch["fgmask"]))
        error = (output["irgbrec"] - batch["image"]).abs() * weight
        terms["irgbl1"] = error.sum() / (weight.sum() * batch["image"].shape[1]).clamp(min=1.0)
    return output, terms


def terms_function(config, decoder_terms: Callable, **keywords) -> Callable:
    """The training step's terms_fn: `decoder_terms` as it is, or `release_terms` when --train.background
    real or --train.masked-loss is on; `keywords` (warm, vertmean, vertstd) are bound to it."""
    background, mask = wanted(config)
    if not (background or mask):
        return functools.partial(decoder_terms, **keywords)
    return functools.partial(release_terms, background=background, mask=mask, **keywords)
