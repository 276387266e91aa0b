"""Decoder assembler: decoders plus primitive placement on the guide mesh (docs/model.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ava.nn.config import ModelConfig
from ava.nn.decoders import GeometryDecoder, RGBDecoder
from ava.nn.placement import place_primitives, primitive_spacing
from ava.nn.precision import autocast, to_float
from ava.nn.rotation import rodrigues
from ava.nn.uvmap import Topology, UVMaps, geometry_image

# Primitive half-extent = 1 / (0.8 * 2 / spacing): neighbours overlap by about 25%.
SCALE_FACTOR = 0.8
EMA_KEEP, EMA_NEW = 0.9, 0.1  # running estimate of adaptwarps during warm-up
RGB_SCALE, RGB_OFFSET = 25.0, 100.0
# Floor on the centre spacing (volume units) used for scales: primitives that collapse onto one
# point (texels outside every UV triangle map to the same boundary point) would otherwise get an
# infinite scale and NaNs in the raymarcher. Real spacings are ~1e-2; this never binds there.
MIN_SPACING = 1e-6


class DecoderAssembler(nn.Module):
    """Decodes primitives (template, position, rotation, scale) and the mesh from the codes.

    Buffers: `adaptwarps` [K] (persistent, the running inverse half-size of each primitive) and the
    non-persistent `vertmean` [V,3], `idxim`/`barim` [3,S,S]; `vertstd` is a float attribute.

    Difference from the original, without new parameters: `adaptwarps` is initialised from the
    mean mesh at construction (the original leaves it at 0, which gives primscale = 0 and an
    infinite volume loss on a fresh model until a `running_avg_scale` pass fills it). As a
    consequence the first `running_avg_scale` pass blends into that estimate instead of replacing
    a zero buffer.
    """

    def __init__(
        self,
        config: ModelConfig,
        topology: Topology,
        uvmaps: UVMaps,
        vertmean: torch.Tensor,
        vertstd: float,
    ):
        super().__init__()
        self.volradius = config.volradius
        self.prims_per_side = config.prims_per_side
        self.nprims = config.num_prims
        self.precision = "fp32"  # set by Autoencoder.set_precision (ava.nn.precision)
        self.rgbdec = RGBDecoder(config)
        self.geodec = GeometryDecoder(config, topology)
        self.register_buffer("vertmean", vertmean.detach().clone().float(), persistent=False)
        self.vertstd = float(vertstd)
        self.register_buffer("idxim", uvmaps.vertex_index.clone().long(), persistent=False)
        self.register_buffer("barim", uvmaps.bary.clone().float(), persistent=False)
        self.register_buffer("adaptwarps", torch.zeros(self.nprims))
        with torch.no_grad():
            self.adaptwarps.copy_(self._inverse_spacing(self._position_image(self.vertmean[None])))

    def _position_image(self, verts_mm: torch.Tensor) -> torch.Tensor:
        """verts [N,V,3] in mm -> postex [N,3,S,S] in volume units (flipped-UV layout)."""
        return geometry_image(verts_mm, self.idxim, self.barim) / self.volradius

    def _inverse_spacing(self, postex: torch.Tensor) -> torch.Tensor:
        """2 / (largest centre spacing over the batch): [K]."""
        spacing = primitive_spacing(postex, self.prims_per_side)
        return 2 / torch.max(spacing, dim=0)[0].clamp_min(MIN_SPACING)

    def set_normalisation(self, vertmean: torch.Tensor, vertstd: float) -> None:
        """Replace the vertex statistics (they are not part of the state dict)."""
        self.vertmean = vertmean.detach().to(self.vertmean.device, torch.float32).clone()
        self.vertstd = float(vertstd)

    def forward(
        self,
        id_cond: dict,
        expr_encoding: torch.Tensor,
        viewpos: torch.Tensor,
        running_avg_scale: bool = False,
        gt_geo: torch.Tensor | None = None,
        residuals_weight: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """id_cond from the identity encoder; expr_encoding [N,16,4,4]; viewpos [N,3] (mm, head
        frame); gt_geo [N,V,3] normalised, used as the guide mesh when given ->
        verts [N,V,3] (predicted, mm), template [N,K,D,D,D,4], primpos [N,K,3], primrot [N,K,3,3],
        primscale [N,K,3]."""
        with autocast(expr_encoding, self.precision):
            decoded = self.geodec(expr_encoding, id_cond["z_geo"], id_cond["b_geo"])
        opacity, geo, position_residual, rotation_residual, scale_residual = to_float(decoded)
        predicted_verts = geo * self.vertstd + self.vertmean
        guide = predicted_verts if gt_geo is None else gt_geo * self.vertstd + self.vertmean
        postex = self._position_image(guide)
        primpos, primrot = place_primitives(postex, self.prims_per_side)
        if running_avg_scale:
            with torch.no_grad():
                estimate = self._inverse_spacing(postex)
                if self.adaptwarps.max().item() == 0:  # e.g. an original checkpoint saved at step 0
                    self.adaptwarps.copy_(estimate)
                else:
                    self.adaptwarps.copy_(self.adaptwarps * EMA_KEEP + EMA_NEW * estimate)
        primscale = self.adaptwarps[None, :, None] * SCALE_FACTOR

        weight = min(max(float(residuals_weight), 0.0), 1.0)
        if weight < 1.0:
            position_residual = position_residual * weight
            rotation_residual = rotation_residual * weight
            scale_residual = scale_residual * weight + (1 - weight)
        batch = expr_encoding.shape[0]
        primpos = primpos + position_residual
        residual_rotation = rodrigues(rotation_residual.reshape(-1, 3)).view(batch, self.nprims, 3, 3)
        primrot = torch.bmm(primrot.reshape(-1, 3, 3), residual_rotation.view(-1, 3, 3)).view(batch, self.nprims, 3, 3)
        primscale = primscale * scale_residual

        viewdir = viewpos / torch.sqrt(torch.sum(viewpos**2, dim=1, keepdim=True))
        with autocast(expr_encoding, self.precision):
            rgb = to_float(self.rgbdec(expr_encoding, id_cond["z_tex"], id_cond["b_tex"], viewdir))
        template = torch.cat([F.relu(rgb * RGB_SCALE + RGB_OFFSET), F.relu(opacity)], dim=-1)
        return {
            "verts": predicted_verts,
            "template": template,
            "primpos": primpos,
            "primrot": primrot,
            "primscale": primscale,
        }
