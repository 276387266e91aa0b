"""`ava train --train.background real` and `--train.masked-loss` (ava.train.extras)."""

from __future__ import annotations

import shutil

import pytest
import torch

from ava.train.extras import release_terms
from ava.train.step import decoder_terms
from test_nn_helpers import SMALL, batch, small_model
from tests.test_train import read_metrics, run_cli, train_argv


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _extras_batch(topology, background_valid, mask):
    inputs = batch(topology, SMALL.uv_size, size=(10, 12), count=2)
    generator = torch.Generator().manual_seed(3)
    inputs["image"] = 255 * torch.rand(2, 3, 10, 12, generator=generator)
    inputs["background"] = 255 * torch.rand(2, 3, 10, 12, generator=generator)
    inputs["background_valid"] = torch.tensor(background_valid)
    inputs["fgmask"] = mask
    inputs["fgmask_valid"] = torch.tensor([True, True])
    return inputs


def test_recorded_backgrounds_replace_the_learned_one_where_valid():
    model, topology, vertmean = small_model()
    model.eval()  # no latent noise, so that separate calls compare
    inputs = _extras_batch(topology, [True, False], torch.ones(2, 1, 10, 12))
    keywords = dict(warm=False, vertmean=vertmean, vertstd=2.0)
    output, terms = release_terms(model, inputs, background=True, mask=False, **keywords)
    model_inputs = {key: value for key, value in inputs.items() if key not in
                    ("image", "background", "background_valid", "fgmask", "fgmask_valid")}
    with torch.no_grad():
        over_recorded = model(**model_inputs, bg=inputs["background"])["irgbrec"]
        learned = model(**model_inputs)["irgbrec"]
    # Sample 0 over its recorded backdrop (as the model composites a given bg), sample 1 over the learned one.
    assert torch.allclose(output["irgbrec"][0], over_recorded[0], atol=1e-3)
    assert torch.allclose(output["irgbrec"][1], learned[1], atol=1e-3)
    assert not torch.allclose(over_recorded[0], learned[0], atol=1.0)
    # The learned background gets no gradient from a sample with a recorded one.
    model.zero_grad()
    only_recorded = _extras_batch(topology, [True, True], torch.ones(2, 1, 10, 12))
    release_terms(model, only_recorded, background=True, mask=False, **keywords)[1]["irgbl1"].backward()
    assert all(parameter.grad is None or not parameter.grad.any() for parameter in model.bgmodel.parameters())
    model.zero_grad()
    decoder_terms(model, only_recorded, **keywords)[1]["irgbl1"].backward()
    assert any(parameter.grad is not None and parameter.grad.any() for parameter in model.bgmodel.parameters())


def test_the_masked_loss_counts_only_the_foreground():
    model, topology, vertmean = small_model()
    model.eval()
    mask = torch.zeros(2, 1, 10, 12)
    mask[..., :, 6:] = 1.0  # the right half is the person
    inputs = _extras_batch(topology, [False, False], mask)
    keywords = dict(warm=False, vertmean=vertmean, vertstd=2.0)
    output, terms = release_terms(model, inputs, background=False, mask=True, **keywords)
    expected = (output["irgbrec"] - inputs["image"]).abs()[..., 6:].mean()
    assert torch.allclose(terms["irgbl1"], expected, rtol=1e-5)
    # A sample without a mask counts every pixel.
    inputs["fgmask_valid"] = torch.tensor([False, False])
    _, terms = release_terms(model, inputs, background=False, mask=True, **keywords)
    assert torch.allclose(terms["irgbl1"], decoder_terms(model, inputs, **keywords)[1]["irgbl1"], rtol=1e-5)
    # Pixels outside the mask get no gradient through the image term.
    inputs["fgmask_valid"] = torch.tensor([True, True])
    image = inputs["image"].clone().requires_grad_(True)
    release_terms(model, {**inputs, "image": image}, background=False, mask=True, **keywords)[1]["irgbl1"].backward()
    assert not image.grad[..., :6].any() and image.grad[..., 6:].abs().min() > 0


def test_training_with_recorded_backgrounds_and_masks(tiny_capture_set, tmp_path, capsys):
    run = tmp_path / "run"
    argv = train_argv(tiny_capture_set, run, 2, "--train.background", "real", "--train.masked-loss")
    assert run_cli(argv) == 0
    output = " ".join(capsys.readouterr().err.split())
    assert "recorded backgrounds for 2 of 2 captures" in output and "foreground masks for 2 of 2 captures" in output
    assert [record["step"] for record in read_metrics(run) if record.get("kind") != "eval"] == [1, 2]


def test_asking_for_what_the_captures_lack_is_one_clear_line(tiny_capture_set, tmp_path, capsys):
    copy = tmp_path / "data"
    shutil.copytree(tiny_capture_set, copy)
    for folder in list(copy.glob("*/decoder/background_image")) + list(copy.glob("*/decoder/foreground_masks")):
        shutil.rmtree(folder)
    assert run_cli(train_argv(copy, tmp_path / "run", 2, "--train.background", "real")) == 2
    assert "download the background_image group" in capsys.readouterr().err
    assert run_cli(train_argv(copy, tmp_path / "run", 2, "--train.masked-loss")) == 2
    assert "download the foreground_masks group" in capsys.readouterr().err
