"""Weight-normalised layers and the original's initialisation (docs/model.md).

The weight norm here is *not* torch's per-output-channel weight norm: the effective weight is
`W * g / ||W||_F` with `||W||_F` the Frobenius norm of the whole weight tensor (one scalar) and
`g` a per-output-channel gain. At initialisation `g` is set to `||W||_F` for every channel, so the
effective weight equals `W`. Parameter names (`weight`, `bias`, `g`) match the original's state
dicts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2


def leaky_relu() -> nn.LeakyReLU:
    """The activation used throughout: LeakyReLU(0.2)."""
    return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)


def _frobenius(weight: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.sum(weight**2))


class LinearWN(nn.Linear):
    """Linear layer with a single-norm weight normalisation: W_eff = W * g[:, None] / ||W||_F."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.g = nn.Parameter(torch.ones(out_features))

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.g[:, None] / _frobenius(self.weight)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.effective_weight(), self.bias)


class Conv2dWN(nn.Conv2d):
    """Conv2d (bias always on) with W_eff = W * g[:, None, None, None] / ||W||_F."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=True)
        self.g = nn.Parameter(torch.ones(out_channels))

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.g[:, None, None, None] / _frobenius(self.weight)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.conv2d(input, self.effective_weight(), self.bias, self.stride, self.padding)


class ConvTranspose2dWN(nn.ConvTranspose2d):
    """ConvTranspose2d (bias always on); the weight is [in, out, kh, kw], so g runs along axis 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=True)
        self.g = nn.Parameter(torch.ones(out_channels))

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.g[None, :, None, None] / _frobenius(self.weight)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(input, self.effective_weight(), self.bias, self.stride, self.padding)


WEIGHT_NORMED = (LinearWN, Conv2dWN, ConvTranspose2dWN)


def init_module(module: nn.Module, gain: float = 1.0) -> None:
    """The original's `initmod`: scaled-uniform weights, zero bias, g = ||W||_F.

    std = gain * sqrt(2 / ((in + out) * ksize)) with ksize = kh*kw for convolutions, kh*kw/(sh*sw)
    for transposed convolutions and 1 for linear layers; weights are uniform in +-std*sqrt(3).
    Transposed convolutions then copy their [0::2, 0::2] taps into the other three stride phases
    (the original assumes stride 2), which makes their initial output free of checkerboards.
    Anything other than a linear or (transposed) convolution is left alone.
    """
    if not isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        return
    weight = module.weight.data
    if isinstance(module, nn.Linear):
        fan_sum, ksize = module.in_features + module.out_features, 1.0
    else:
        fan_sum = module.in_channels + module.out_channels
        ksize = float(module.kernel_size[0] * module.kernel_size[1])
        if isinstance(module, nn.ConvTranspose2d):
            ksize /= module.stride[0] * module.stride[1]
    std = gain * math.sqrt(2.0 / (fan_sum * ksize))
    weight.uniform_(-std * math.sqrt(3.0), std * math.sqrt(3.0))
    if module.bias is not None:
        module.bias.data.zero_()
    if isinstance(module, nn.ConvTranspose2d):
        weight[:, :, 0::2, 1::2] = weight[:, :, 0::2, 0::2]
        weight[:, :, 1::2, 0::2] = weight[:, :, 0::2, 0::2]
        weight[:, :, 1::2, 1::2] = weight[:, :, 0::2, 0::2]
    if isinstance(module, WEIGHT_NORMED):
        module.g.data[:] = _frobenius(weight)


def init_sequence(sequence: nn.Sequential) -> None:
    """The original's `initseq`: each layer gets the gain of the activation that follows it.

    LeakyReLU(s) -> calculate_gain('leaky_relu', s), ReLU -> calculate_gain('relu'), anything
    else -> 1; the last element is initialised with gain 1 (a no-op when it is an activation).
    """
    layers = list(sequence)
    for layer, following in zip(layers[:-1], layers[1:]):
        if isinstance(following, nn.ReLU):
            init_module(layer, nn.init.calculate_gain("relu"))
        elif isinstance(following, nn.LeakyReLU):
            init_module(layer, nn.init.calculate_gain("leaky_relu", following.negative_slope))
        else:
            init_module(layer)
    init_module(layers[-1])
