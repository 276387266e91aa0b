"""The headset encoder: five near-infrared headset views -> the decoder's expression code.

A universal driver (Wei et al. 2019, "VR Facial Animation via Multiview Image Translation";
Lombardi et al. 2018, "Deep Appearance Models") maps the headset cameras' images to the latent
expression code of a pretrained decoder. Here the code is the mean `expr_mu` [16,4,4] of the
decoder's VAE bottleneck (ava.nn.bottleneck); no identity index goes in, so one network serves
every subject.

Each view has its own small convolution stack (the cameras see different parts of the face from
different places, so their filters are not shared); the five stacks run as one grouped
convolution. Their 4x4 feature maps are flattened, fused by a two-layer perceptron and mapped to
the code. Every view is normalised on its own (zero mean, unit spread over its pixels) before the
convolutions, which removes the exposure differences between subjects and headsets that active IR
illumination brings. The output is `code_mean + code_scale * z`, with the two buffers set from the
training codes, so the network's own output `z` is in standard units.

With `neutral` on, the encoder also reads the subject's own neutral headset frame, as the
universal headset encoders of Bai et al. 2024 ("Universal Facial Encoding of Codec Avatars from VR
Headsets") condition on a subject's neutral frames: how this face, under this headset fit and IR
reflectance, looks when it does nothing. Both frames go through the same first levels of each
view's stack; per view, a 1x1 convolution fuses the two feature maps (at 16x16) before the
remaining levels, so the rest of the stack sees the current frame relative to the neutral one.
"""

from __future__ import annotations

import torch
from torch import nn

from ava.nn.config import LATENT_CHANNELS, HeadsetEncoderConfig

CODE_SHAPE = (LATENT_CHANNELS, 4, 4)
VIEWS = 5  # the headset's IR cameras, in the order of ava.data.layout.ENCODER_CAMERAS
# Added to each view's pixel standard deviation (0..255 units) before dividing, so that a nearly
# uniform view (a camera covered, a dark frame) is not amplified into noise.
SPREAD_FLOOR = 4.0


def _levels(widths: list[int]) -> list[nn.Module]:
    """Grouped stride-2 4x4 convolutions (one group per view) between consecutive widths."""
    layers: list[nn.Module] = []
    for in_channels, out_channels in zip(widths[:-1], widths[1:]):
        layers += [nn.Conv2d(VIEWS * in_channels, VIEWS * out_channels, 4, 2, 1, groups=VIEWS),
                   nn.LeakyReLU(0.2, inplace=True)]
    return layers


def normalise_views(views: torch.Tensor) -> torch.Tensor:
    """[N,5,S,S] (0..255) -> each view at zero mean and unit spread (floored) over its pixels."""
    flat = views.float().flatten(2)
    mean = flat.mean(dim=2, keepdim=True)
    spread = flat.std(dim=2, keepdim=True) + SPREAD_FLOOR
    return ((flat - mean) / spread).view_as(views)


class HeadsetEncoder(nn.Module):
    """views [N,5,S,S] (0..255, cameras in ENCODER_CAMERAS order) and, with `config.neutral`, the
    subject's neutral frame [N,5,S,S] or [5,S,S] -> code [N,16,4,4]."""

    def __init__(self, config: HeadsetEncoderConfig):
        super().__init__()
        config.validate()
        self.config = config
        widths = [1] + config.level_channels()
        if config.neutral:
            stem = config.stem_levels
            self.views = nn.Sequential(*_levels(widths[: stem + 1]))
            fused = widths[stem]
            self.fusion = nn.Sequential(nn.Conv2d(VIEWS * 2 * fused, VIEWS * fused, 1, groups=VIEWS),
                                        nn.LeakyReLU(0.2, inplace=True))
            self.after = nn.Sequential(*_levels(widths[stem:]))
        else:
            self.views = nn.Sequential(*_levels(widths))
        features = VIEWS * widths[-1] * 16
        code_size = LATENT_CHANNELS * 16
        self.fuse = nn.Sequential(nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(features, config.hidden),
                                  nn.LeakyReLU(0.2, inplace=True), nn.Linear(config.hidden, code_size))
        self.register_buffer("code_mean", torch.zeros(CODE_SHAPE))
        self.register_buffer("code_scale", torch.ones(CODE_SHAPE))

    def set_code_statistics(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """mean, scale [16,4,4]: the training codes' per-element mean and spread."""
        self.code_mean.copy_(mean.reshape(CODE_SHAPE))
        self.code_scale.copy_(scale.reshape(CODE_SHAPE))

    def standardise(self, code: torch.Tensor) -> torch.Tensor:
        """[N,16,4,4] codes in the standard units the network outputs (for losses and alignment)."""
        return (code - self.code_mean) / self.code_scale

    def _check(self, views: torch.Tensor, name: str) -> None:
        size = self.config.image_size
        if views.dim() != 4 or tuple(views.shape[1:]) != (VIEWS, size, size):
            raise ValueError(f"the headset encoder reads [N,{VIEWS},{size},{size}] {name}, got {tuple(views.shape)}")

    def forward(self, views: torch.Tensor, neutral: torch.Tensor | None = None) -> torch.Tensor:
        self._check(views, "views")
        if not self.config.neutral:
            if neutral is not None:
                raise ValueError("this headset encoder was built without neutral conditioning; pass no neutral frame")
            features = self.views(normalise_views(views))
        else:
            if neutral is None:
                raise ValueError("this headset encoder is conditioned on the subject's neutral headset frame; pass it")
            if neutral.dim() == 3:
                neutral = neutral[None].expand(len(views), -1, -1, -1)
            self._check(neutral, "neutral views")
            if len(neutral) != len(views):
                raise ValueError(f"{len(views)} frames but {len(neutral)} neutral frames")
            both = self.views(normalise_views(torch.cat([views, neutral])))
            current, reference = both[: len(views)], both[len(views) :]
            # Per view: [current channels, neutral channels], so the grouped 1x1 convolution fuses
            # each view with its own neutral.
            count, channels, height, width = current.shape
            paired = torch.stack([current.view(count, VIEWS, -1, height, width),
                                  reference.view(count, VIEWS, -1, height, width)], dim=2)
            features = self.after(self.fusion(paired.reshape(count, 2 * channels, height, width)))
        standard = self.fuse(features).view(-1, *CODE_SHAPE)
        return self.code_mean + self.code_scale * standard
