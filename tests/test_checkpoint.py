"""The safetensors checkpoint: round trip, atomic writes, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from ava.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from ava.data.stats import NormStats
from ava.errors import UserError
from ava.nn.config import ModelConfig
from test_nn_helpers import SMALL, batch, small_model


def stats_for(vertmean: torch.Tensor) -> NormStats:
    return NormStats(
        texmean=np.full((3, SMALL.uv_size, SMALL.uv_size), 120.0, dtype=np.float32),
        texstd=31.5,
        vertmean=vertmean.numpy(),
        vertstd=2.0,
    )


def trained_state():
    """A small model after one Adam step, with a scheduler."""
    model, topology, vertmean = small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=1.4)
    inputs = batch(topology, SMALL.uv_size, size=(4, 4))
    out = model(**inputs)
    (out["irgbrec"].mean() + out["verts"].abs().mean()).backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler, topology, vertmean, inputs


def save(path, model, optimizer, scheduler, topology, vertmean, step=7, **extra):
    return save_checkpoint(
        path,
        model=model,
        optimizer=optimizer,
        scheduler_state=scheduler.state_dict(),
        stats=stats_for(vertmean),
        topology=topology,
        identities=["20230324--0820--AEY864", "20230831--0814--ADL311"],
        cameras=["400002", "400945", "401031"],
        config={"model": SMALL.to_dict(), "train": {"lr": 1e-3}},
        step=step,
        extra_state=extra or None,
    )


def test_round_trip_gives_identical_outputs_and_state(tmp_path):
    model, optimizer, scheduler, topology, vertmean, inputs = trained_state()
    rng = torch.get_rng_state()
    path = save(tmp_path / "run.safetensors", model, optimizer, scheduler, topology, vertmean, rng_state=rng, epoch=3)
    checkpoint = load_checkpoint(path)
    assert checkpoint.format_version == FORMAT_VERSION and checkpoint.step == 7
    assert checkpoint.identities[1] == "20230831--0814--ADL311" and checkpoint.cameras[0] == "400002"
    assert checkpoint.stats.texstd == 31.5 and checkpoint.stats.vertstd == 2.0
    assert checkpoint.model_config() == SMALL
    assert torch.equal(checkpoint.extra_state["rng_state"], rng) and checkpoint.extra_state["epoch"] == 3
    for name in ("verts", "uvs", "faces", "face_uvs"):
        assert torch.equal(getattr(checkpoint.topology, name), getattr(topology, name))

    restored = checkpoint.build_autoencoder(raymarch_backend="torch")
    model.eval()
    restored.eval()
    with torch.no_grad():
        expected = model(**inputs, output_set={"primscale"})
        actual = restored(**inputs, output_set={"primscale"})
    for key in ("irgbrec", "verts", "primscale", "encoding"):
        assert torch.equal(expected[key], actual[key]), key

    fresh_optimizer = torch.optim.Adam(restored.parameters(), lr=1e-3)
    checkpoint.restore_optimizer(fresh_optimizer)
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert saved["param_groups"][0]["lr"] == loaded["param_groups"][0]["lr"]
    for index, values in saved["state"].items():
        for name, value in values.items():
            assert torch.equal(value, loaded["state"][index][name]), (index, name)
    fresh_scheduler = torch.optim.lr_scheduler.StepLR(fresh_optimizer, step_size=10, gamma=1.4)
    fresh_scheduler.load_state_dict(checkpoint.scheduler_state)
    assert fresh_scheduler.state_dict() == scheduler.state_dict()


def test_an_interrupted_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer, scheduler, topology, vertmean, _ = trained_state()
    path = tmp_path / "latest.safetensors"
    save(path, model, optimizer, scheduler, topology, vertmean, step=1)
    before = path.read_bytes()

    def crash_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 1000)  # a partial file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save(path, model, optimizer, scheduler, topology, vertmean, step=2)
    assert path.read_bytes() == before
    assert load_checkpoint(path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.safetensors"]


def test_mismatches_are_reported_clearly(tmp_path):
    model, optimizer, scheduler, topology, vertmean, _ = trained_state()
    path = save(tmp_path / "a.safetensors", model, optimizer, scheduler, topology, vertmean)
    checkpoint = load_checkpoint(path)
    other, _, _ = small_model(num_cameras=4)  # another camera count: table shapes differ
    with pytest.raises(UserError, match=r"another shape: .*colorcal\.bcam \(3, 3\) \(model wants \(4, 3\)\)"):
        checkpoint.restore_model(other)
    checkpoint.model_state.pop("bottleneck.mu.g")
    checkpoint.model_state["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match=r"1 missing: bottleneck\.mu\.g; 1 unexpected: extra\.weight"):
        checkpoint.restore_model(model)
    fewer = torch.optim.Adam(list(model.parameters())[:3])
    with pytest.raises(UserError, match="optimiser groups"):
        checkpoint.restore_optimizer(fewer)


def test_foreign_and_future_files_are_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(UserError, match="ava convert"):
        load_checkpoint(plain)
    # The original's aeparams*.pt (torch.save: a zip archive, or a pickle from torch < 1.6).
    for legacy in (False, True):
        original = tmp_path / f"aeparams_{int(legacy)}.pt"
        torch.save({"w": torch.zeros(2)}, original, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(UserError, match="PyTorch file .* `ava convert`"):
            load_checkpoint(original)
    # ... while a checkpoint whose header length starts with those bytes (0x80 = 128 + 256 k) loads.
    header = len(json.dumps({"__metadata__": {}}).encode())
    padded = tmp_path / "padded.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(padded), metadata={"pad": "x" * (0x80 + 256 - 60 - header)})
    assert padded.read_bytes()[0] == 0x80, padded.read_bytes()[:9]
    with pytest.raises(UserError, match=r"is not an ava checkpoint \(a state dict"):  # safetensors, not ava's
        load_checkpoint(padded)
    future = tmp_path / "future.safetensors"
    safetensors.torch.save_file(
        {"w": torch.zeros(2)}, str(future), metadata={"format": "ava-checkpoint", "format_version": "99"}
    )
    with pytest.raises(UserError, match="version 99"):
        load_checkpoint(future)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(UserError, match="truncated"):
        load_checkpoint(truncated)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="unknown model config"):
        ModelConfig.from_dict({**SMALL.to_dict(), "colour": 1})
    assert json.loads(json.dumps(SMALL.to_dict())) == SMALL.to_dict()
