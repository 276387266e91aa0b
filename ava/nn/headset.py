"""The headset encoder: five near-infrared headset views -> the decoder's expression code.

A universal driver (Wei et al. 2019, "VR Facial Animation via Multiview Image Translation";
Lombardi et al. 2018, "Deep Appearance Models") maps the headset cameras' images to the latent
expression code of a pretrained decoder. Here the code is the mean `expr_mu` [16,4,4] of the
decoder's VAE bottleneck (ava.nn.bottleneck), and the encoder sees nothing identity-specific: no
identity index, no neutral frame, only the five views, so one network serves every subject.

Each view has its own small convolution stack (the cameras see different parts of the face from
different places, so their filters are not shared); the five stacks run as one grouped
convolution. Their 4x4 feature maps are flattened, fused by a two-layer perceptron and mapped to
the code. Every view is normalised on its own (zero mean, unit spread over its pixels) before the
convolutions, which removes the exposure and skin-reflectance differences between subjects and
headsets that active IR illumination brings. The output is `code_mean + code_scale * z`, with the
two buffers set from the training codes, so the network's own output `z` is in standard units.
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


class HeadsetEncoder(nn.Module):
    """views [N,5,S,S] (0..255, cameras in ENCODER_CAMERAS order) -> code [N,16,4,4]."""

    def __init__(self, config: HeadsetEncoderConfig):
        super().__init__()
        config.validate()
        self.config = config
        layers: list[nn.Module] = []
        widths = [1] + config.level_channels()
        for in_channels, out_channels in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(VIEWS * in_channels, VIEWS * out_channels, 4, 2, 1, groups=VIEWS),
                       nn.LeakyReLU(0.2, inplace=True)]
        self.views = nn.Sequential(*layers)
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

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if views.dim() != 4 or tuple(views.shape[1:]) != (VIEWS, size, size):
            raise ValueError(f"the headset encoder reads [N,{VIEWS},{size},{size}] views, got {tuple(views.shape)}")
        flat = views.float().flatten(2)
        mean = flat.mean(dim=2, keepdim=True)
        spread = flat.std(dim=2, keepdim=True) + SPREAD_FLOOR
        normalised = ((flat - mean) / spread).view_as(views)
        standard = self.fuse(self.views(normalised)).view(-1, *CODE_SHAPE)
        return self.code_mean + self.code_scale * standard
