"""Model layer: sizes against the original, layer formulas, quirks, outputs and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ava.errors import UserError
from ava.nn.autoencoder import build_autoencoder
from ava.nn.bottleneck import kl_loss_stable
from ava.nn.config import ModelConfig, model_preset
from ava.nn.decoders import first_uv_per_vertex
from ava.nn.layers import Conv2dWN, ConvTranspose2dWN, LinearWN, init_module
from ava.nn.placement import primitive_spacing
from ava.nn.rotation import rodrigues
from ava.nn.uvmap import build_uv_maps, geometry_image, parse_obj
from test_nn_helpers import SMALL, batch, grid_topology, head_topology, small_model


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_ava256_matches_the_original_sizes():
    """SPEC §3.13: 354 state-dict keys and 46,871,903 parameters for 80 cameras and 4 ids."""
    torch.manual_seed(0)
    topology = grid_topology(8, low=(0.0, 0.0), extent=(1.0, 1.0))  # sizes do not depend on V
    config = model_preset("ava256")
    model = build_autoencoder(
        config,
        topology,
        vertmean=topology.verts * 100,
        vertstd=1.0,
        num_cameras=80,
        num_identities=4,
        uvmaps=build_uv_maps(topology, config.uv_size, use_cache=False),
    )
    state = model.state_dict()
    assert len(state) == 354
    assert count(model) == 46_871_903
    assert count(model.id_encoder) == 5_062_060
    assert count(model.id_encoder.geo) == 2_188_527
    assert count(model.id_encoder.comb) == 652_238
    assert count(model.expr_encoder) == 5_551_232
    assert count(model.bottleneck) == 2_112
    assert count(model.decoder_assembler) == 35_918_504
    assert count(model.decoder_assembler.geodec) == 9_554_600
    assert count(model.decoder_assembler.rgbdec) == 26_363_904
    assert count(model.bgmodel) == 337_491
    expected_shapes = {
        "id_encoder.tex.layers.e3.0.g": (64,),
        "id_encoder.uv_tidx": (3, 1024, 1024),
        "id_encoder.warpidentity": (1, 2, 128, 128),
        "expr_encoder.comb.14.weight": (64, 64, 4, 4),
        "decoder_assembler.adaptwarps": (16384,),
        "decoder_assembler.geodec.layers.t0.0.weight": (32, 256, 4, 4),
        "decoder_assembler.geodec.motion.2.weight": (9, 64, 1, 1),
        "decoder_assembler.geodec.geo.0.weight": (64, 32, 1, 1),
        "decoder_assembler.geodec.bias": (8, 1024, 1024),
        "decoder_assembler.geodec.coords": (1, topology.num_verts, 1, 2),
        "decoder_assembler.rgbdec.viewmod.2.g": (128,),
        "decoder_assembler.rgbdec.layers.t7.0.weight": (16, 24, 4, 4),
        "decoder_assembler.rgbdec.bias": (24, 1024, 1024),
        "bgmodel.mlp.10.weight": (3, 256, 1, 1),
        "bgmodel.cam_ident": (80, 80),
        "colorcal.bident": (4, 3),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    # Non-persistent buffers stay out of the state dict, as in the original.
    assert not any(key.endswith(("idxim", "barim", "vertmean")) for key in state)


def test_presets_and_derived_layer_plans():
    tiny = model_preset("tiny")
    assert (tiny.uv_size, tiny.prims_per_side, tiny.voxels_per_prim) == (256, 32, 8)
    assert tiny.levels == 6
    assert tiny.skip_channels() == [3, 16, 32, 64, 64, 128]
    assert tiny.decoder_channels(8) == [128, 64, 64, 32, 16, 8]
    ava256 = model_preset("ava256")
    assert ava256.decoder_channels(24) == [256, 128, 128, 64, 64, 32, 16, 24]
    assert ava256.expression_combiner_channels() == [128, 256, 256, 512]
    with pytest.raises(UserError):
        ModelConfig(uv_size=96, prims_per_side=12, voxels_per_prim=8)
    with pytest.raises(UserError):
        ModelConfig(uv_size=256, prims_per_side=16, voxels_per_prim=8)
    with pytest.raises(UserError, match="at least 4"):  # placement needs 4 texels per primitive
        ModelConfig(uv_size=64, prims_per_side=32, voxels_per_prim=2)
    with pytest.raises(UserError):
        model_preset("huge")
    assert ModelConfig.from_dict(tiny.to_dict()) == tiny


def test_tiny_preset_forward_shapes():
    config = model_preset("tiny")
    model, topology, _ = small_model(config=config)
    model.eval()
    with torch.no_grad():
        out = model(
            **batch(topology, config.uv_size, size=(6, 8)),
            output_set={"primscale", "primpos", "primrot", "template", "samplecoords", "ialpha", "bg", "idcond"},
        )
    assert out["irgbrec"].shape == (1, 3, 6, 8)
    assert out["verts"].shape == (1, topology.num_verts, 3)
    assert out["encoding"].shape == out["expr_mu"].shape == out["expr_logstd"].shape == (1, 16, 4, 4)
    assert out["template"].shape == (1, 1024, 8, 8, 8, 4)
    assert out["primpos"].shape == (1, 1024, 3) and out["primrot"].shape == (1, 1024, 3, 3)
    assert out["samplecoords"].shape == (1, 6, 8, 2) and out["bg"].shape == (1, 3, 6, 8)
    assert [b.shape[-1] for b in out["id_cond"]["b_geo"]] == [8, 16, 32, 64, 128, 256]
    assert torch.isfinite(out["primscale"]).all() and (out["primscale"] > 0).all()
    with pytest.raises(ValueError, match="samplecooords"):
        model(**batch(topology, config.uv_size, size=(2, 2)), output_set={"samplecooords"})


def test_weight_norm_layers_follow_the_single_norm_formula():
    torch.manual_seed(0)
    conv = Conv2dWN(3, 5, 3, 1, 1)
    linear = LinearWN(4, 6)
    transposed = ConvTranspose2dWN(5, 7, 4, 2, 1)
    for layer in (conv, linear, transposed):
        layer.g.data = torch.rand_like(layer.g) + 0.5
        layer.bias.data = torch.randn_like(layer.bias)
    x = torch.randn(2, 3, 6, 6)
    norm = conv.weight.norm()  # the Frobenius norm of the whole tensor
    expected = F.conv2d(x, conv.weight * conv.g.view(5, 1, 1, 1) / norm, conv.bias, padding=1)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    v = torch.randn(3, 4)
    expected = v @ (linear.weight * linear.g[:, None] / linear.weight.norm()).T + linear.bias
    assert torch.allclose(linear(v), expected, atol=1e-6)
    y = torch.randn(2, 5, 3, 3)
    weight = transposed.weight * transposed.g.view(1, 7, 1, 1) / transposed.weight.norm()
    expected = F.conv_transpose2d(y, weight, transposed.bias, stride=2, padding=1)
    assert torch.allclose(transposed(y), expected, atol=1e-5)


def test_initialisation_matches_the_original_rule():
    torch.manual_seed(0)
    transposed = ConvTranspose2dWN(32, 16, 4, 2, 1)
    gain = math.sqrt(2 / (1 + 0.2**2))
    init_module(transposed, gain)
    weight = transposed.weight.data
    bound = gain * math.sqrt(2 / ((32 + 16) * 16 / 4)) * math.sqrt(3)
    assert float(weight.abs().max()) <= bound and float(weight.abs().max()) > 0.8 * bound
    for phase in ((0, 1), (1, 0), (1, 1)):
        assert torch.equal(weight[:, :, phase[0] :: 2, phase[1] :: 2], weight[:, :, 0::2, 0::2])
    assert torch.allclose(transposed.g, weight.norm().expand(16))
    assert torch.equal(transposed.bias, torch.zeros(16))
    # With g = ||W|| the effective weight is W itself.
    assert torch.allclose(transposed.effective_weight(), weight, atol=1e-7)


def test_rodrigues_keeps_the_epsilon():
    identity_like = rodrigues(torch.zeros(1, 3))[0]
    assert torch.allclose(identity_like, math.cos(math.sqrt(1e-5)) * torch.eye(3), rtol=0, atol=1e-7)
    assert float(identity_like[0, 0]) < 1 - 4e-6  # not the identity: R(0) = cos(sqrt(1e-5)) I
    rvec = torch.tensor([[0.3, -0.5, 0.8]], dtype=torch.float64)
    skew = torch.tensor([[0, -0.8, -0.5], [0.8, 0, -0.3], [0.5, 0.3, 0]], dtype=torch.float64)
    # For a large angle the epsilon is negligible: the exact rotation matrix.
    assert torch.allclose(rodrigues(rvec)[0], torch.linalg.matrix_exp(skew), atol=1e-5)


def test_kl_loss_stable_is_the_gaussian_kl_for_negative_logstd():
    mu = torch.randn(2, 16, 4, 4)
    logstd = -torch.rand(2, 16, 4, 4)
    exact = 0.5 * (mu**2 + torch.exp(2 * logstd) - 1) - logstd
    assert torch.allclose(kl_loss_stable(mu, logstd), exact.mean(-1), atol=1e-6)
    assert kl_loss_stable(mu, logstd).shape == (2, 16, 4)
    # Mirrored (linear, not exponential) for positive logstd.
    assert torch.allclose(kl_loss_stable(mu, -logstd), kl_loss_stable(mu, logstd))


def test_first_uv_per_vertex_and_unused_vertices():
    topology = parse_obj("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 5 5 5\nvt 0 0\nvt 1 0\nvt 0 1\nvt 0.5 0.5\nf 1/2 2/1 3/3\nf 1/4 3/1 2/2\n")
    assert first_uv_per_vertex(topology).tolist() == [1, 0, 2, 0]


def test_adaptwarps_start_from_the_mean_mesh():
    model, topology, vertmean = small_model()
    assembler = model.decoder_assembler
    postex = geometry_image(vertmean[None], assembler.idxim, assembler.barim) / 256.0
    expected = 2 / primitive_spacing(postex, SMALL.prims_per_side)[0]
    assert torch.allclose(assembler.adaptwarps, expected)
    # A warm-up pass on a scaled mesh moves the estimate by the 0.9/0.1 running average.
    inputs = batch(topology, SMALL.uv_size, size=(2, 2))
    gt = (vertmean[None] * 1.5 - vertmean[None]) / assembler.vertstd  # normalised GT = 1.5x mean
    model.eval()
    with torch.no_grad():
        model(**inputs, running_avg_scale=True, gt_geo=gt, residuals_weight=0.0)
    assert torch.allclose(assembler.adaptwarps, 0.9 * expected + 0.1 * expected / 1.5, rtol=1e-5)


def test_gradients_reach_every_parameter_that_should_learn():
    model, topology, vertmean = small_model()
    model.train()
    inputs = batch(topology, SMALL.uv_size, size=(8, 8), count=2, camindex=torch.tensor([0, 2]))
    inputs["idindex"] = torch.tensor([0, 1])
    out = model(**inputs, output_set={"primscale"})
    image = torch.rand_like(out["irgbrec"]) * 255
    target_verts = inputs["verts"] * model.decoder_assembler.vertstd + vertmean
    loss = (
        (out["irgbrec"] - image).abs().mean()
        + 0.1 * (out["verts"] - target_verts).abs().mean()
        + 1e-3 * kl_loss_stable(out["expr_mu"], out["expr_logstd"]).mean()
        + 0.01 * torch.prod(1 / out["primscale"], dim=-1).sum(-1).mean()
    )
    loss.backward()
    silent = {name for name, parameter in model.named_parameters() if parameter.grad is None or not parameter.grad.any()}
    # As in the original, the finest identity skip level (3 channels at S) feeds no decoder layer.
    finest = SMALL.levels - 1
    expected = {f"id_encoder.{unet}.layers.b0.0.{p}" for unet in ("geo", "tex") for p in ("weight", "bias", "g")}
    expected |= {f"id_encoder.comb.layers.{block}{finest}.0.{p}" for block in ("t2g", "g2t", "g", "t") for p in ("weight", "bias", "g")}
    assert silent == expected


def test_uv_size_must_match_the_data():
    model, topology, _ = small_model()
    inputs = batch(topology, 32, size=(2, 2))
    with pytest.raises(UserError, match="64x64"):
        model(**inputs)


def test_alpha_mask_and_force_neutral():
    model, topology, _ = small_model()
    model.eval()
    inputs = batch(topology, SMALL.uv_size, size=(4, 4))
    mask = torch.zeros(16, 16)
    mask[:8] = 1  # the top half of the UV square: rows 0..3 of the 8x8 primitive grid
    with torch.no_grad():
        out = model(**inputs, alpha_mask=mask, output_set={"primpos"}, force_neutral=True)
        full = model(**inputs, output_set={"primpos"}, force_neutral=True)
    assert out["primpos"].shape == (1, 32, 3)
    assert torch.equal(out["primpos"], full["primpos"][:, :32])
    # force_neutral zeroes the features before the bottleneck, so mu is the bias times 0.1.
    bias = model.bottleneck.mu.bias
    assert torch.allclose(out["expr_mu"], (bias * 0.1).view(1, 16, 1, 1).expand(1, 16, 4, 4))


def test_other_grid_shapes_build():
    topology, vertmean = head_topology()
    for config in (ModelConfig(uv_size=128, prims_per_side=32, voxels_per_prim=4, warp_size=16),):
        model = build_autoencoder(
            config,
            topology,
            vertmean=vertmean,
            vertstd=1.0,
            num_cameras=2,
            num_identities=1,
            uvmaps=build_uv_maps(topology, config.uv_size, use_cache=False),
        )
        # Decoder widths at 8, 16, 32, 64, 128: 64, 64, 32, 16, 4; motion and geometry both at 32.
        assert model.decoder_assembler.geodec.motion[0].in_channels == 32
        assert model.decoder_assembler.geodec.geo[0].in_channels == 32
        assert tuple(model.decoder_assembler.rgbdec.bias.shape) == (12, 128, 128)
    with pytest.raises(UserError, match="vertices"):
        build_autoencoder(
            SMALL, topology, vertmean=torch.zeros(5, 3), vertstd=1.0, num_cameras=1, num_identities=1
        )
    assert np.isfinite(vertmean.numpy()).all()
