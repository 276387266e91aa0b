"""Identity and expression encoders (docs/model.md), generalised to any UV size.

Module and parameter names follow the original so that its state dicts load unchanged
(`id_encoder.tex.layers.e3.0.g`, `expr_encoder.comb.14.bias`, ...).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from ava.errors import UserError
from ava.nn.config import EXPRESSION_FEATURES, EXPRESSION_STACK_CHANNELS, LATENT_CHANNELS, ModelConfig
from ava.nn.layers import Conv2dWN, init_module, init_sequence, leaky_relu
from ava.nn.uvmap import geometry_image


def _check_uv_input(name: str, image: torch.Tensor, size: int) -> None:
    if image.shape[-2:] != (size, size):
        raise UserError(
            f"{name} is {tuple(image.shape[-2:])} but the model expects {size}x{size} UV maps; "
            "set --model.uv-size to the dataset's texture size or use matching data"
        )


class UnetEncoder(nn.Module):
    """Encoder half of a UNet: a [N,16,4,4] code and one skip map per level (docs/model.md).

    Level i has e_i (4x4 stride-2 conv + lrelu) and the skip b_i (1x1 conv on the level's input,
    followed by lrelu except at level 0). Skips are returned coarse to fine.
    """

    def __init__(self, config: ModelConfig, in_channels: int = 3):
        super().__init__()
        widths = [in_channels] + config.encoder_channels()
        self.levels = config.levels
        self.layers = nn.ModuleDict()
        for level in range(self.levels):
            self.layers[f"e{level}"] = nn.Sequential(Conv2dWN(widths[level], widths[level + 1], 4, 2, 1), leaky_relu())
            skip: list[nn.Module] = [Conv2dWN(widths[level], widths[level], 1, 1, 0)]
            if level > 0:
                skip.append(leaky_relu())
            self.layers[f"b{level}"] = nn.Sequential(*skip)
        self.enc = Conv2dWN(widths[-1], LATENT_CHANNELS, 1, 1, 0)
        for level in range(self.levels):
            init_sequence(self.layers[f"e{level}"])
            init_sequence(self.layers[f"b{level}"])
        init_module(self.enc)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x [N,C,S,S] -> (z [N,16,4,4], skips coarse to fine: [N,c_i,8*2^i,8*2^i])."""
        skips: list[torch.Tensor] = []
        for level in range(self.levels):
            skips.insert(0, self.layers[f"b{level}"](x))
            x = self.layers[f"e{level}"](x)
        return self.enc(x), skips


class GeoTexCombiner(nn.Module):
    """Mixes geometry and texture skips per level (docs/model.md), coarse to fine."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleDict()
        for level, channels in enumerate(reversed(config.skip_channels())):

            def block(in_channels: int) -> nn.Sequential:
                return nn.Sequential(Conv2dWN(in_channels, channels, 1, 1, 0), leaky_relu())

            self.layers[f"t2g{level}"] = block(channels)
            self.layers[f"g2t{level}"] = block(channels)
            self.layers[f"g{level}"] = block(2 * channels)
            self.layers[f"t{level}"] = block(2 * channels)
            for name in ("g", "t", "t2g", "g2t"):
                init_sequence(self.layers[f"{name}{level}"])

    def forward(
        self, geo_skips: list[torch.Tensor], tex_skips: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        mixed_geo, mixed_tex = [], []
        for level, (geo, tex) in enumerate(zip(geo_skips, tex_skips)):
            geo_input = torch.cat([geo, self.layers[f"t2g{level}"](tex)], dim=1)
            tex_input = torch.cat([tex, self.layers[f"g2t{level}"](geo)], dim=1)
            mixed_geo.append(self.layers[f"g{level}"](geo_input))
            mixed_tex.append(self.layers[f"t{level}"](tex_input))
        return mixed_geo, mixed_tex


def _identity_grid(size: int) -> torch.Tensor:
    """[1,2,size,size]: channel 0 = x = linspace(-1,1) along columns, channel 1 = y along rows."""
    axis = np.linspace(-1.0, 1.0, size)  # float64 then float32, as the original builds it
    x_grid, y_grid = np.meshgrid(axis, axis)
    return torch.from_numpy(np.stack([x_grid, y_grid])[None].astype(np.float32))


class IdentityEncoder(nn.Module):
    """Identity conditioning from a neutral mesh and texture (docs/model.md).

    Buffers `uv_tidx`, `uv_bary` ([3,S,S]) and `warpidentity` ([1,2,W,W]) are persistent as in the
    original, so original checkpoints load strictly. The skips are resampled through a learned
    warp `warpidentity + bias / W`; because the identity grid is sampled with
    align_corners=False this is only approximately an identity resample, and is kept that way.
    """

    def __init__(self, config: ModelConfig, uv_index: torch.Tensor, uv_bary: torch.Tensor):
        super().__init__()
        self.uv_size = config.uv_size
        self.register_buffer("uv_tidx", uv_index.clone().long())
        self.register_buffer("uv_bary", uv_bary.clone().float())
        self.tex = UnetEncoder(config)
        self.geo = UnetEncoder(config)
        self.comb = GeoTexCombiner(config)
        self.wsize = config.warp_size
        self.register_buffer("warpidentity", _identity_grid(self.wsize))
        self.bias = nn.Parameter(torch.zeros(1, 2, self.wsize, self.wsize))

    def forward(self, neut_verts: torch.Tensor, neut_avgtex: torch.Tensor) -> dict:
        """neut_verts [N,V,3], neut_avgtex [N,3,S,S] (both normalised) -> id_cond dict:
        z_geo, z_tex [N,16,4,4]; b_geo, b_tex lists of skips coarse to fine."""
        _check_uv_input("the neutral texture", neut_avgtex, self.uv_size)
        geo = geometry_image(neut_verts, self.uv_tidx, self.uv_bary)
        z_geo, b_geo = self.geo(geo)
        z_tex, b_tex = self.tex(neut_avgtex)
        b_geo, b_tex = self.comb(b_geo, b_tex)
        warp = self.warpidentity + self.bias / self.wsize
        warped_geo, warped_tex = [], []
        for geo_skip, tex_skip in zip(b_geo, b_tex):
            batch, _, height, width = geo_skip.shape
            grid = F.interpolate(warp, size=(height, width), mode="bilinear", align_corners=False)
            grid = repeat(grid, "1 xy h w -> n h w xy", n=batch)
            warped_geo.append(F.grid_sample(geo_skip, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
            warped_tex.append(F.grid_sample(tex_skip, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
        return {"z_geo": z_geo, "z_tex": z_tex, "b_geo": warped_geo, "b_tex": warped_tex}


class ExpressionEncoder(nn.Module):
    """Expression features relative to the neutral (docs/model.md): [N,64,4,4].

    Every convolution, including the last, is followed by lrelu (as in the original).
    """

    def __init__(self, config: ModelConfig, uv_index: torch.Tensor, uv_bary: torch.Tensor):
        super().__init__()
        self.uv_size = config.uv_size
        self.register_buffer("uv_tidx", uv_index.clone().long())
        self.register_buffer("uv_bary", uv_bary.clone().float())

        def chain(widths: list[int], kernel: int, stride: int, padding: int) -> list[nn.Module]:
            modules: list[nn.Module] = []
            for in_channels, out_channels in zip(widths[:-1], widths[1:]):
                modules += [Conv2dWN(in_channels, out_channels, kernel, stride, padding), leaky_relu()]
            return modules

        self.tex = nn.Sequential(*chain([3, 16, 32, 64], 4, 2, 1))
        self.geo = nn.Sequential(*chain([3, 16, 32, 32], 4, 2, 1))
        downsampling = [64 + 32] + config.expression_combiner_channels()
        stack = [downsampling[-1]] + list(EXPRESSION_STACK_CHANNELS)
        self.comb = nn.Sequential(
            *chain(downsampling, 4, 2, 1),
            *chain(stack, 3, 1, 1),
            *chain([stack[-1], EXPRESSION_FEATURES], 4, 2, 1),
        )
        init_sequence(self.tex)
        init_sequence(self.geo)
        init_sequence(self.comb)

    def forward(
        self, verts: torch.Tensor, avgtex: torch.Tensor, neut_verts: torch.Tensor, neut_avgtex: torch.Tensor
    ) -> torch.Tensor:
        """verts, neut_verts [N,V,3]; avgtex, neut_avgtex [N,3,S,S] (normalised) -> [N,64,4,4]."""
        _check_uv_input("the texture", avgtex, self.uv_size)
        geo = self.geo(geometry_image(verts - neut_verts, self.uv_tidx, self.uv_bary))
        tex = self.tex(avgtex - neut_avgtex)
        return self.comb(torch.cat((tex, geo), dim=1))
