"""`ava convert`: a state dict under the original's key names becomes an ava checkpoint.

The tests at the end convert a state dict made by the original's own model code (from the checkout
in $AVA_ORIGINAL_CHECKOUT, run on the CPU) and compare outputs; they skip without it. The others
use a small ava model saved under the original's names, which is enough for what they check (the
CLI, camera reordering, wrapper prefixes, error messages) but not for the key mapping itself.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from ava.checkpoint import load_checkpoint
from ava.cli import main as cli_main
from ava.data.ids import CaptureId, format_ids_csv
from ava.nn.original import infer_model_config, load_original_state, original_camera_order, strip_wrapper_prefixes
from ava.nn.uvmap import UVMaps, build_uv_maps, write_obj
from test_nn_helpers import SMALL, batch, small_model

# The original indexed cameras in calibration order; ava indexes the sorted union.
ORIGINAL_CAMERAS = ["401031", "400002", "400945"]
CAPTURES = [
    CaptureId("20230324", "0820", "AEY864"),
    CaptureId("20230831", "0814", "ADL311"),
    CaptureId("20230405", "1635", "AAN112"),
]


def run_cli(*arguments) -> int:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["convert", *map(str, arguments)])
    return exit_info.value.code


@pytest.fixture
def original(tmp_path):
    """A small ava model saved as the original saves (DDP's prefix), and the files that describe its data."""
    model, topology, vertmean = small_model(num_cameras=3, num_identities=2)
    with torch.no_grad():  # make the per-camera tables distinguishable
        model.colorcal.wcam.copy_(torch.tensor([[1.0, 1.1, 1.2], [0.9, 0.8, 0.7], [1.3, 1.0, 0.6]]))
        model.colorcal.bcam.copy_(torch.tensor([[5.0, 0, 0], [0, 7.0, 0], [0, 0, 9.0]]))
    state = {f"module.{key}": value for key, value in model.state_dict().items()}
    torch.save(state, tmp_path / "aeparams_000123.pt")
    np.savez(
        tmp_path / "stats.npz",
        texmean=np.zeros((3, SMALL.uv_size, SMALL.uv_size), np.float32),
        texstd=40.0,
        vertmean=vertmean.numpy(),
        vertstd=2.0,
    )
    (tmp_path / "cameras.txt").write_text("\n".join(ORIGINAL_CAMERAS) + "\n")
    (tmp_path / "ids.csv").write_text(format_ids_csv(CAPTURES))
    write_obj(topology, tmp_path / "topology.obj")
    return model, topology, tmp_path


def common_flags(folder):
    return [
        "--stats", folder / "stats.npz",
        "--cameras", folder / "cameras.txt",
        "--ids-csv", folder / "ids.csv",
        "--topology", folder / "topology.obj",
    ]  # fmt: skip


def test_convert_records_the_data_and_reorders_the_cameras(original, monkeypatch):
    model, topology, folder = original
    monkeypatch.setenv("AVA_CACHE_DIR", str(folder / "cache"))
    output = folder / "converted.safetensors"
    assert run_cli(folder / "aeparams_000123.pt", "-o", output, *common_flags(folder)) == 0
    checkpoint = load_checkpoint(output)
    assert checkpoint.step == 123
    assert checkpoint.cameras == sorted(ORIGINAL_CAMERAS)
    assert checkpoint.identities == [capture.folder for capture in CAPTURES[:2]]
    assert checkpoint.stats.texstd == 40.0
    converted = checkpoint.build_autoencoder(raymarch_backend="torch")
    model.eval()
    converted.eval()
    for original_index, camera in enumerate(ORIGINAL_CAMERAS):
        new_index = sorted(ORIGINAL_CAMERAS).index(camera)
        inputs = batch(topology, SMALL.uv_size, size=(5, 6), camindex=torch.tensor([original_index]))
        inputs["idindex"] = torch.tensor([1])
        with torch.no_grad():
            expected = model(**inputs)["irgbrec"]
            inputs["camindex"] = torch.tensor([new_index])
            actual = converted(**inputs)["irgbrec"]
        assert torch.equal(expected, actual), camera
    # An existing output is not replaced without --overwrite.
    assert run_cli(folder / "aeparams_000123.pt", "-o", output, *common_flags(folder)) == 2


def test_convert_lists_what_does_not_match(original, monkeypatch, capsys):
    model, _, folder = original
    monkeypatch.setenv("AVA_CACHE_DIR", str(folder / "cache"))
    state = model.state_dict()
    state.pop("decoder_assembler.rgbdec.layers.t2.0.g")
    state["decoder_assembler.rgbdec.extra"] = torch.zeros(1)
    torch.save(state, folder / "broken.pt")
    code = run_cli(folder / "broken.pt", "-o", folder / "out.safetensors", *common_flags(folder))
    assert code == 2
    message = capsys.readouterr().err
    assert "rgbdec.layers.t2.0.g" in message and "rgbdec.extra" in message
    assert not (folder / "out.safetensors").exists()
    # Too few identities in the ids CSV for the state dict.
    (folder / "one.csv").write_text(format_ids_csv(CAPTURES[:1]))
    flags = common_flags(folder)
    flags[5] = folder / "one.csv"
    assert run_cli(folder / "aeparams_000123.pt", "-o", folder / "out.safetensors", *flags) == 2
    assert "only 1" in capsys.readouterr().err


def test_size_inference_and_camera_order():
    model, _, _ = small_model(num_cameras=3, num_identities=2)
    config, cameras, identities = infer_model_config(strip_wrapper_prefixes(model.state_dict()))
    assert config == SMALL and (cameras, identities) == (3, 2)
    order, consistent = original_camera_order([["b", "a"], ["b", "a", "c"]], ["a", "b", "c"])
    assert order == ["b", "a", "c"] and not consistent
    assert original_camera_order([["c", "a", "b"]] * 2, ["a", "b", "c"]) == (["c", "a", "b"], True)


@pytest.mark.parametrize("wrap", [
    lambda key: f"_orig_mod.{key}",  # torch.compile
    lambda key: f"module._orig_mod.{key}",  # DDP around a compiled model
    lambda key: f"_orig_mod.module.{key}",  # compiled DDP
    lambda key: f"module.module.{key}",  # DataParallel inside DDP
    lambda key: key.replace("decoder_assembler.", "decoder_assembler._orig_mod.", 1),  # one compiled submodule
], ids=["compiled", "ddp-compiled", "compiled-ddp", "dataparallel-in-ddp", "compiled-submodule"])
def test_wrapper_prefixes_are_stripped_in_any_nesting(tmp_path, wrap):
    model, _, _ = small_model(num_cameras=3, num_identities=2)
    plain = model.state_dict()
    torch.save({wrap(key): value for key, value in plain.items()}, tmp_path / "aeparams.pt")
    state = load_original_state(tmp_path / "aeparams.pt")
    assert list(state) == list(plain)
    assert infer_model_config(state) == (SMALL, 3, 2)


def test_unknown_common_prefix_is_named(original, capsys):
    model, _, folder = original
    torch.save({f"net.ae.{key}": value for key, value in model.state_dict().items()}, folder / "aeparams.pt")
    assert run_cli(folder / "aeparams.pt", "-o", folder / "out.safetensors", *common_flags(folder)) == 2
    err = capsys.readouterr().err
    assert "starts with 'net.ae.'" in err and "without it the keys are an Ava-256 autoencoder's" in err
    partial = {f"net.{key}": value for key, value in model.state_dict().items() if key != "colorcal.wcam"}
    torch.save(partial, folder / "part.pt")
    assert run_cli(folder / "part.pt", "-o", folder / "out.safetensors", *common_flags(folder)) == 2
    err = capsys.readouterr().err
    assert "lacks" in err and "every key starts with 'net.'" in err and "without it" not in err


# --- against the original's own model code ------------------------------------------------------

@pytest.fixture(scope="module")
def original_model(original_code, tmp_path_factory):
    """The full-size model built by the original's own `get_autoencoder` (3 cameras, 2 identities,
    the face topology centred as the vertex mean), every parameter moved off its initial value
    (many start at 0 or 1, where a mix-up would not show), saved as the original saves it."""
    import types

    from ava.nn.uvmap import load_obj

    folder = tmp_path_factory.mktemp("original-model")
    assets = original_code.path / "assets"
    topology = load_obj(assets / "face_topology.obj")
    vertmean = topology.verts - topology.verts.mean(0)  # mm, centred in the +-256 mm volume
    dataset = types.SimpleNamespace(identities=[capture.folder for capture in CAPTURES[:2]], vertstd=2.0,
                                    vertmean=vertmean.numpy(), get_allcameras=lambda: list(ORIGINAL_CAMERAS))
    torch.manual_seed(0)
    model = original_code.utils.get_autoencoder(dataset, str(assets))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in model.parameters():
            scale = parameter.abs().mean().clamp(min=0.01)
            parameter.add_(0.1 * scale * torch.randn(parameter.shape, generator=generator))
    torch.save({f"module.{key}": value for key, value in model.state_dict().items()}, folder / "aeparams_000007.pt")
    np.savez(folder / "stats.npz", texmean=np.zeros((3, 1024, 1024), np.float32), texstd=40.0,
             vertmean=vertmean.numpy(), vertstd=2.0)
    (folder / "cameras.txt").write_text("\n".join(ORIGINAL_CAMERAS) + "\n")
    (folder / "ids.csv").write_text(format_ids_csv(CAPTURES))
    shutil.copyfile(assets / "face_topology.obj", folder / "topology.obj")
    # The original's UV maps (its own closest-point search) are buffers of its encoders.
    uvmaps = UVMaps(vertex_index=model.id_encoder.uv_tidx, bary=model.id_encoder.uv_bary)
    return model, topology, uvmaps, folder


def test_ava_uv_maps_are_the_originals(original_model):
    """On the Ava-256 face topology ava's rasterised UV maps equal the original's closest-point maps
    except at a few texels where UV triangles overlap (7 of 1024^2 here): the texel lies inside
    two triangles, and each picked one that contains it (ava the one it lies deepest in, the
    original whichever its search met first)."""
    _, topology, original_maps, _ = original_model
    ours = build_uv_maps(topology, 1024, use_cache=False)
    differ = (ours.vertex_index != original_maps.vertex_index).any(0) | (ours.bary != original_maps.bary).any(0)
    assert int(differ.sum()) <= 100
    for maps in (ours, original_maps):
        assert bool((maps.bary[:, differ] >= 0).all())  # inside that triangle, not on its nearest edge


def test_convert_reproduces_the_original_models_outputs(original_model, monkeypatch):
    """`ava convert` on a state dict of the original's own model: the ava model the checkpoint
    builds reproduces the original's encodings, identity conditioning, decoded primitives, mesh,
    running-average primitive scale, background and colour-calibrated render on the same inputs,
    with the camera indices moved to ava's sorted order."""
    original, topology, _, folder = original_model
    monkeypatch.setenv("AVA_CACHE_DIR", str(folder / "cache"))
    output = folder / "converted.safetensors"
    assert run_cli(folder / "aeparams_000007.pt", "-o", output, *common_flags(folder)) == 0
    checkpoint = load_checkpoint(output)
    assert checkpoint.step == 7 and checkpoint.cameras == sorted(ORIGINAL_CAMERAS)
    converted = checkpoint.build_autoencoder(raymarch_backend="torch")
    original.eval()
    converted.eval()

    camera = 2  # the original's camera 2 is ava's camera 1 (cameras sorted by id)
    inputs = batch(topology, 1024, size=(10, 12), camindex=torch.tensor([camera]))
    generator = torch.Generator().manual_seed(3)
    inputs["idindex"] = torch.tensor([1])
    inputs["target_neut_avgtex"] = torch.randn(1, 3, 1024, 1024, generator=generator)
    inputs["target_neut_verts"] = 0.1 * torch.randn(1, topology.num_verts, 3, generator=generator)
    decoded = {}
    original.decoder_assembler.register_forward_hook(lambda module, args, output: decoded.update(output))
    with torch.no_grad():
        expected = original(**inputs, running_avg_scale=True, output_set={"idcond", "bg", "ialpha"})
        inputs["camindex"] = torch.tensor([sorted(ORIGINAL_CAMERAS).index(ORIGINAL_CAMERAS[camera])])
        actual = converted(**inputs, running_avg_scale=True,
                           output_set={"id_cond", "bg", "ialpha", "template", "primpos", "primrot", "primscale"})
    expected.update({key: decoded[key] for key in ("template", "primpos", "primrot", "primscale")})
    expected["adaptwarps"] = original.decoder_assembler.adaptwarps
    actual["adaptwarps"] = converted.decoder_assembler.adaptwarps
    assert float((expected["ialpha"] > 0.05).float().mean()) > 0.5  # most rays hit the head
    # Everything up to the primitives' positions is bit-exact. ava builds the primitives' frames with
    # their columns in another memory order, so torch.bmm with the residual rotation and the norms of
    # the spacing sum in another order: the rotations, scales and running-average scales differ by
    # an ulp (float32 eps 1.2e-7), which carries into the opacity and the render. rtol 1e-5 allows
    # that rounding (measured: 2e-7 at most) and nothing a conversion error would give.
    for key in ("encoding", "expr_mu", "expr_logstd", "verts", "template", "primpos", "bg"):
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)
    for key in ("primrot", "primscale", "adaptwarps", "ialpha", "irgbrec"):
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    for key in ("z_geo", "z_tex"):
        torch.testing.assert_close(actual["id_cond"][key], expected["id_cond"][key], rtol=0, atol=0, msg=key)
    for key in ("b_geo", "b_tex"):
        for level, (ours, theirs) in enumerate(zip(actual["id_cond"][key], expected["id_cond"][key], strict=True)):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=f"{key}[{level}]")
