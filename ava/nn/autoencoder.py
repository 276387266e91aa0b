"""The full model: encoders, bottleneck, decoder assembler, raymarcher, colour calibration and
background (docs/model.md), and `build_autoencoder` to assemble it from a config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ava.errors import UserError
from ava.nn.assembler import DecoderAssembler
from ava.nn.background import BackgroundModelSimple
from ava.nn.bottleneck import VAEBottleneck
from ava.nn.colorcal import Colorcal
from ava.nn.config import EXPRESSION_FEATURES, LATENT_CHANNELS, ModelConfig
from ava.nn.encoders import ExpressionEncoder, IdentityEncoder
from ava.nn.precision import autocast, check_precision, to_float
from ava.nn.uvmap import Topology, UVMaps, build_uv_maps

ALWAYS_RETURNED = ("encoding", "expr_mu", "expr_logstd", "irgbrec", "verts")
ON_REQUEST = ("id_cond", "samplecoords", "primpos", "primrot", "primscale", "template", "bg", "ialpha")
# The original spelled the identity conditioning output "idcond"; both names work.
OUTPUT_ALIASES = {"idcond": "id_cond"}


class Raymarcher(nn.Module):
    """Renders decoded primitives with `ava.kernels.mvp_raymarch` (no parameters).

    `backend` ("torch", "triton" or None for automatic) is passed through to the kernel.
    """

    def __init__(self, volradius: float, step: float = 1.0, backend: str | None = None):
        super().__init__()
        self.volume_radius = float(volradius)
        self.step = float(step)
        self.backend = backend

    def forward(
        self, raypos: torch.Tensor, raydir: torch.Tensor, tminmax: torch.Tensor, decout: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays [N,H,W,3], [N,H,W,3], [N,H,W,2] -> (rgb [N,3,H,W], alpha [N,1,H,W])."""
        # Imported here so that building or converting a model never needs the kernels' Triton setup.
        from ava.kernels import mvp_raymarch

        options = {} if self.backend is None else {"backend": self.backend}
        rayrgba = mvp_raymarch(
            raypos,
            raydir,
            self.step / self.volume_radius,
            tminmax,
            decout["primpos"].contiguous(),
            decout["primrot"].contiguous(),
            decout["primscale"].contiguous(),
            decout["template"].contiguous(),
            None,
            **options,
        )
        rayrgba = rearrange(rayrgba, "n h w rgba -> n rgba h w")
        return rayrgba[:, :3].contiguous(), rayrgba[:, 3:4].contiguous()


def _requested_outputs(output_set) -> set[str]:
    requested = {OUTPUT_ALIASES.get(name, name) for name in output_set}
    unknown = sorted(requested - set(ALWAYS_RETURNED) - set(ON_REQUEST))
    if unknown:
        raise ValueError(f"unknown model outputs {unknown}; available: {sorted(ALWAYS_RETURNED + ON_REQUEST)}")
    return requested


def _sample_coords(pixelcoords: torch.Tensor) -> torch.Tensor:
    """Pixel positions [N,H,W,2] (x, y) -> [-1, 1], align-corners style (the original's), as the
    background model reads them."""
    height, width = pixelcoords.shape[-3], pixelcoords.shape[-2]
    return torch.cat([pixelcoords[..., :1] * 2 / (width - 1) - 1, pixelcoords[..., 1:] * 2 / (height - 1) - 1], dim=-1)


def _keep_primitives(decout: dict, alpha_mask: torch.Tensor, per_side: int) -> dict:
    """Drop primitives whose cell of `alpha_mask` [U,V] (nearest-resized to P x P) is zero."""
    mask = F.interpolate(alpha_mask[None, None].float(), size=(per_side, per_side), mode="nearest")
    keep = mask.reshape(-1) != 0
    decout = dict(decout)
    for key in ("template", "primpos", "primrot", "primscale"):
        decout[key] = decout[key][:, keep]
    return decout


class Autoencoder(nn.Module):
    """Encodes an expression and an identity, decodes primitives and renders them.

    Attribute names are the original's state-dict prefixes: id_encoder, expr_encoder, bottleneck,
    decoder_assembler, raymarcher, colorcal, bgmodel.
    """

    def __init__(
        self,
        *,
        identity_encoder: IdentityEncoder,
        expression_encoder: ExpressionEncoder,
        bottleneck: VAEBottleneck,
        decoder_assembler: DecoderAssembler,
        raymarcher: Raymarcher,
        colorcal: Colorcal | None = None,
        bgmodel: BackgroundModelSimple | None = None,
    ):
        super().__init__()
        self.id_encoder = identity_encoder
        self.expr_encoder = expression_encoder
        self.bottleneck = bottleneck
        self.decoder_assembler = decoder_assembler
        self.raymarcher = raymarcher
        self.colorcal = colorcal
        self.bgmodel = bgmodel
        self.precision = "fp32"

    def set_precision(self, precision: str) -> "Autoencoder":
        """fp32, tf32 or bf16 (see ava.nn.precision); bf16 autocasts the encoders, the decoders'
        convolutions and the background MLP on CUDA. Not saved in the state dict."""
        self.precision = check_precision(precision)
        self.decoder_assembler.precision = precision
        return self

    def forward(
        self,
        camrot: torch.Tensor,
        campos: torch.Tensor,
        focal: torch.Tensor,
        princpt: torch.Tensor,
        modelmatrix: torch.Tensor,
        avgtex: torch.Tensor,
        verts: torch.Tensor,
        neut_avgtex: torch.Tensor,
        neut_verts: torch.Tensor,
        target_neut_avgtex: torch.Tensor | None = None,
        target_neut_verts: torch.Tensor | None = None,
        pixelcoords: torch.Tensor | None = None,
        idindex: torch.Tensor | None = None,
        camindex: torch.Tensor | None = None,
        id_cond: dict | None = None,
        bg: torch.Tensor | None = None,
        expr_encoding: torch.Tensor | None = None,
        running_avg_scale: bool = False,
        gt_geo: torch.Tensor | None = None,
        residuals_weight: float = 1.0,
        output_set=frozenset(),
        force_neutral: bool = False,
        alpha_mask: torch.Tensor | None = None,
    ) -> dict:
        """Shapes: camrot [N,3,3], campos [N,3] (head frame, mm), focal, princpt [N,2],
        modelmatrix [N,4,4], avgtex, neut_avgtex [N,3,S,S] and verts, neut_verts [N,V,3]
        (normalised), pixelcoords [N,H,W,2] (x, y), idindex, camindex i64 [N].

        The identity comes from the *target* neutral (default: the source neutral); the
        expression is encoded relative to the source neutral. A given `id_cond` (the identity
        encoder's output) or `expr_encoding` [N,16,4,4] skips that encoder, and its inputs may be
        None: a headset driver's output or an interactive viewer's cached code is decoded as it is
        (expr_mu is then the code and expr_logstd zero). Returns encoding, expr_mu,
        expr_logstd [N,16,4,4], irgbrec [N,3,H,W] and verts [N,V,3] (mm) always, plus every name
        of `output_set` among id_cond (or idcond), samplecoords, primpos, primrot, primscale,
        template, bg, ialpha.
        """
        if pixelcoords is None:
            raise TypeError("Autoencoder.forward needs pixelcoords [N,H,W,2]")
        requested = _requested_outputs(output_set)
        if id_cond is None:
            id_cond = self.encode_identity(
                neut_verts if target_neut_verts is None else target_neut_verts,
                neut_avgtex if target_neut_avgtex is None else target_neut_avgtex,
            )
        if expr_encoding is not None:
            encoding, expr_mu, expr_logstd = expr_encoding, expr_encoding, torch.zeros_like(expr_encoding)
        else:
            encoding, expr_mu, expr_logstd = self.encode_expression(verts, avgtex, neut_verts, neut_avgtex, force_neutral)
        decout = self.decode_primitives(
            id_cond, encoding, campos, modelmatrix, running_avg_scale, gt_geo, residuals_weight, alpha_mask
        )
        samplecoords = _sample_coords(pixelcoords)
        rgb, alpha = self.render_primitives(decout, campos, camrot, focal, princpt, pixelcoords)
        irgbrec, bg = self.composite(rgb, alpha, camindex, idindex, samplecoords, bg)

        result = {
            "encoding": encoding,
            "expr_mu": expr_mu,
            "expr_logstd": expr_logstd,
            "irgbrec": irgbrec,
            "verts": decout["verts"],
        }
        available = {
            "id_cond": id_cond,
            "samplecoords": samplecoords,
            "bg": bg,
            "ialpha": alpha,
            **{key: decout[key] for key in ("primpos", "primrot", "primscale", "template")},
        }
        for name in requested - set(ALWAYS_RETURNED):
            result[name] = available[name]
        return result

    def encode_identity(self, neut_verts: torch.Tensor, neut_avgtex: torch.Tensor) -> dict:
        """The identity conditioning (id_cond: z_geo, z_tex [N,16,4,4] and the skips b_geo, b_tex)
        of a neutral mesh [N,V,3] and texture [N,3,S,S] (normalised), in fp32."""
        with autocast(neut_verts, self.precision):
            return to_float(self.id_encoder(neut_verts, neut_avgtex))

    def encode_expression(
        self,
        verts: torch.Tensor,
        avgtex: torch.Tensor,
        neut_verts: torch.Tensor,
        neut_avgtex: torch.Tensor,
        force_neutral: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(encoding, mu, logstd) [N,16,4,4] of a frame's mesh and texture relative to the neutral
        ones (all normalised); the encoding is sampled around mu while training."""
        with autocast(verts, self.precision):
            features = to_float(self.expr_encoder(verts, avgtex, neut_verts, neut_avgtex))
        if force_neutral:
            # The original zeroes the features before the bottleneck, so mu is still the conv bias
            # times 0.1 rather than 0; kept for parity.
            features = torch.zeros_like(features)
        return self.bottleneck(features)

    def decode_primitives(
        self,
        id_cond: dict,
        encoding: torch.Tensor,
        campos: torch.Tensor,
        modelmatrix: torch.Tensor,
        running_avg_scale: bool = False,
        gt_geo: torch.Tensor | None = None,
        residuals_weight: float = 1.0,
        alpha_mask: torch.Tensor | None = None,
    ) -> dict:
        """The decoder assembler's output (verts, template, primpos, primrot, primscale; see
        `DecoderAssembler.forward`) for a camera at campos [N,3] (mm) and the head pose
        modelmatrix [N,4,4]; primitives whose cell of `alpha_mask` [U,V] is zero are dropped."""
        # The camera position in the head's frame: what the colour decoder is conditioned on.
        viewpos = torch.bmm((campos - modelmatrix[:, :3, 3])[:, None, :], modelmatrix[:, :3, :3])[:, 0, :]
        decout = self.decoder_assembler(id_cond, encoding, viewpos, running_avg_scale, gt_geo, residuals_weight)
        if alpha_mask is not None:
            decout = _keep_primitives(decout, alpha_mask, self.decoder_assembler.prims_per_side)
        return decout

    def render_primitives(
        self,
        decout: dict,
        campos: torch.Tensor,
        camrot: torch.Tensor,
        focal: torch.Tensor,
        princpt: torch.Tensor,
        pixelcoords: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raymarches the decoded primitives through the pixels pixelcoords [N,H,W,2] of a camera
        (campos [N,3], camrot [N,3,3], focal, princpt [N,2]) -> (rgb [N,3,H,W], alpha [N,1,H,W])."""
        from ava.kernels import compute_raydirs

        raypos, raydir, tminmax = compute_raydirs(
            campos.contiguous(),
            camrot.contiguous(),
            focal.contiguous(),
            princpt.contiguous(),
            pixelcoords.contiguous(),
            self.raymarcher.volume_radius,
        )
        return self.raymarcher(raypos, raydir, tminmax, decout)

    def composite(
        self,
        rgb: torch.Tensor,
        alpha: torch.Tensor,
        camindex: torch.Tensor | None,
        idindex: torch.Tensor | None,
        samplecoords: torch.Tensor,
        bg: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rendered rgb [N,3,H,W] colour-calibrated for the camera and identity, over the
        background bg [N,3,H,W] (default: the background model's, at samplecoords [N,H,W,2])
        by its alpha [N,1,H,W] -> (image [N,3,H,W], the background used or None)."""
        if self.colorcal is not None and camindex is not None and idindex is not None:
            rgb = self.colorcal(rgb, camindex, idindex)
        if bg is None and self.bgmodel is not None and camindex is not None and idindex is not None:
            with autocast(samplecoords, self.precision):
                bg = to_float(self.bgmodel(camindex, idindex, samplecoords))
        # Without a background the original composites over black.
        return (rgb + (1.0 - alpha) * bg if bg is not None else rgb), bg


def build_autoencoder(
    config: ModelConfig,
    topology: Topology,
    *,
    vertmean: torch.Tensor,
    vertstd: float,
    num_cameras: int,
    num_identities: int,
    uvmaps: UVMaps | None = None,
    raymarch_backend: str | None = None,
) -> Autoencoder:
    """Assemble the model (the original's `get_autoencoder`) for a topology and dataset sizes.

    vertmean [V,3] and vertstd are the dataset's vertex statistics (docs/data-layout.md); the number of
    cameras and identities sizes the colour calibration and background tables.
    """
    config.validate()
    if tuple(vertmean.shape) != (topology.num_verts, 3):
        raise UserError(
            f"the vertex mean has shape {tuple(vertmean.shape)} but the topology has {topology.num_verts} "
            "vertices; the dataset and the topology OBJ do not belong together"
        )
    if num_cameras < 1 or num_identities < 1:
        raise UserError(f"need at least one camera and one identity, got {num_cameras} and {num_identities}")
    if uvmaps is None:
        uvmaps = build_uv_maps(topology, config.uv_size)
    if uvmaps.size != config.uv_size:
        raise ValueError(f"UV maps are {uvmaps.size}x{uvmaps.size} but the config asks for {config.uv_size}")
    return Autoencoder(
        identity_encoder=IdentityEncoder(config, uvmaps.vertex_index, uvmaps.bary),
        expression_encoder=ExpressionEncoder(config, uvmaps.vertex_index, uvmaps.bary),
        bottleneck=VAEBottleneck(EXPRESSION_FEATURES, LATENT_CHANNELS),
        decoder_assembler=DecoderAssembler(config, topology, uvmaps, vertmean, vertstd),
        raymarcher=Raymarcher(config.volradius, config.raymarch_step, raymarch_backend),
        colorcal=Colorcal(num_cameras, num_identities),
        bgmodel=BackgroundModelSimple(num_cameras, num_identities, config.background_width),
    )
