"""`ava convert`: a state dict under the original's key names becomes an ava checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ava.checkpoint import load_checkpoint
from ava.cli import main as cli_main
from ava.data.ids import CaptureId, format_ids_csv
from ava.nn.original import infer_model_config, load_original_state, original_camera_order, strip_wrapper_prefixes
from ava.nn.uvmap import write_obj
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
    """An 'original' model saved with DDP's prefix, and the files that describe its data."""
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


def test_convert_gives_the_same_renders(original, monkeypatch):
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
