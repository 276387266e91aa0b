"""VAE bottleneck and its "stable" KL term (docs/model.md)."""

from __future__ import annotations

import torch
from torch import nn

from ava.nn.layers import Conv2dWN, init_module

MEAN_SQUASH = 0.1
LOGSTD_SQUASH = 0.01


def kl_loss_stable(mu: torch.Tensor, logstd: torch.Tensor) -> torch.Tensor:
    """mean over the last axis of (-0.5 + |ls| + 0.5 mu^2 + 0.5 exp(-2|ls|)).

    Equals the Gaussian KL to N(0,1) for logstd <= 0 and mirrors it for logstd > 0, where it grows
    linearly instead of exponentially (the original's choice, kept for comparable loss values).
    """
    magnitude = torch.abs(logstd)
    return torch.mean(-0.5 + magnitude + 0.5 * mu**2 + 0.5 * torch.exp(2 * -1 * magnitude), dim=-1)


class VAEBottleneck(nn.Module):
    """x [N,64,4,4] -> (z, mu, logstd), each [N,16,4,4]; z = mu in eval mode."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.mu = Conv2dWN(in_channels, out_channels, 1, 1, 0)
        self.logstd = Conv2dWN(in_channels, out_channels, 1, 1, 0)
        init_module(self.mu)
        init_module(self.logstd)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu = self.mu(x) * MEAN_SQUASH
        logstd = self.logstd(x) * LOGSTD_SQUASH
        if self.training:
            z = mu + torch.exp(logstd) * torch.randn_like(logstd)
        else:
            z = mu
        return z, mu, logstd
