"""Normalisation statistics (docs/data-layout.md).

These are the ORIGINAL's formulas, kept on purpose although some are odd (the per-capture texture
variance files are ignored; one capture's texture std is the spread across colour channels), because
trained models and imported checkpoints expect inputs normalised exactly this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ava.data.formats import BadMember, decode_image, parse_npy, parse_variance
from ava.data.layout import CaptureLayout
from ava.errors import UserError
from ava.files import read_text


@dataclass
class NormStats:
    """Mean and std used to normalise textures and vertices of every sample."""

    texmean: np.ndarray  # f32 [3,T,T], 0..255 units
    texstd: float
    vertmean: np.ndarray  # f32 [V,3], mm
    vertstd: float


@dataclass
class CaptureStats:
    """One capture's own statistics files: means and the scalar variances."""

    texmean: np.ndarray  # f32 [3,T,T]
    texvar: float
    vertmean: np.ndarray  # f32 [V,3]
    vertvar: float

    def as_norm_stats(self) -> NormStats:
        """What a single capture dataset uses on its own: the means and the square roots of the variances."""
        return NormStats(self.texmean, float(np.sqrt(self.texvar)), self.vertmean, float(np.sqrt(self.vertvar)))


def read_capture_stats(layout: CaptureLayout) -> CaptureStats:
    """Reads `color_mean.png`, `color_variance.txt`, `registration_vertices_mean.npy` and its variance."""
    try:
        texture = decode_image(layout.texture_mean.read_bytes(), mode="RGB")
    except FileNotFoundError:
        raise UserError(f"{layout.texture_mean} does not exist; download the uv_image asset") from None
    except BadMember as error:
        raise UserError(f"{layout.texture_mean}: {error}; re-download the uv_image asset") from None
    if texture.shape[0] != texture.shape[1]:
        raise UserError(f"{layout.texture_mean} is {texture.shape[1]}x{texture.shape[0]}; textures must be square")
    try:
        vertmean = parse_npy(layout.vertices_mean.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{layout.vertices_mean} does not exist; download the kinematic_tracking asset") from None
    except (BadMember, OSError) as error:
        raise UserError(f"{layout.vertices_mean} cannot be read ({error}); re-download it") from None
    if vertmean.ndim != 2 or vertmean.shape[1] != 3:
        raise UserError(f"{layout.vertices_mean} has shape {list(vertmean.shape)}; expected [V,3]")

    def variance(path) -> float:
        if not path.is_file():
            raise UserError(f"{path} does not exist; download it again")
        return parse_variance(read_text(path), str(path))

    return CaptureStats(
        texmean=np.ascontiguousarray(texture.transpose(2, 0, 1), dtype=np.float32),
        texvar=variance(layout.texture_variance),
        vertmean=vertmean.astype(np.float32),
        vertvar=variance(layout.vertices_variance),
    )


def combine_capture_stats(captures: Iterable[CaptureStats]) -> NormStats:
    """The multi-capture statistics of the original (docs/data-layout.md), streamed over the captures.

    texmean  = mean_i texmean_i
    texstd   = N == 1: sqrt(mean((texmean - mean over channels of texmean)^2))
               N > 1:  sqrt(sum_i sum (texmean_i - texmean)^2 / (texmean.size * N))
    vertmean = mean_i vertmean_i
    vertstd  = sqrt(sum_i sum (vertmean_i - vertmean)^2 / (vertmean.size * N) + mean_i vertvar_i)

    Sums of squares are accumulated in float64 as sum x^2 - N mean^2, so only one capture's files
    are held at a time.
    """
    count = 0
    tex_sum = tex_sq = vert_sum = vert_sq = None
    vertvar_sum = 0.0
    for stats in captures:
        tex = stats.texmean.astype(np.float64)
        vert = stats.vertmean.astype(np.float64)
        if tex_sum is None:
            tex_sum, vert_sum = np.zeros_like(tex), np.zeros_like(vert)
            tex_sq = vert_sq = 0.0
        elif tex.shape != tex_sum.shape or vert.shape != vert_sum.shape:
            raise UserError(
                f"captures disagree on sizes: texture {list(tex.shape)} vs {list(tex_sum.shape)}, "
                f"vertices {list(vert.shape)} vs {list(vert_sum.shape)}; use captures of one release"
            )
        tex_sum += tex
        vert_sum += vert
        tex_sq += float(np.sum(tex * tex))
        vert_sq += float(np.sum(vert * vert))
        vertvar_sum += stats.vertvar
        count += 1
        if count == 1:
            first_texmean = tex
    if count == 0:
        raise UserError("no captures to compute normalisation statistics from")
    texmean = tex_sum / count
    vertmean = vert_sum / count
    if count == 1:
        texstd = float(np.sqrt(np.mean((first_texmean - first_texmean.mean(axis=0, keepdims=True)) ** 2)))
    else:
        spread = max(tex_sq - count * float(np.sum(texmean * texmean)), 0.0)
        texstd = float(np.sqrt(spread / (texmean.size * count)))
    vert_spread = max(vert_sq - count * float(np.sum(vertmean * vertmean)), 0.0)
    vertstd = float(np.sqrt(vert_spread / (vertmean.size * count) + vertvar_sum / count))
    if texstd <= 0 or vertstd <= 0:
        raise UserError(
            f"normalisation std is zero (texstd {texstd}, vertstd {vertstd}): the captures' means are identical"
        )
    return NormStats(texmean.astype(np.float32), texstd, vertmean.astype(np.float32), vertstd)
