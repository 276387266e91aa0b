"""`ava synth --device`: the GPU's way of rendering a frame (every full ray against every
primitive, one raymarch for the dome cameras and one for the headset's), run on the CPU through
the same function, gives the CPU renderer's images; the device choice reaches the workers."""

from __future__ import annotations

import json

import pytest
import torch

from ava.errors import UserError
from ava.synth import SynthConfig, generate
from ava.synth.pipeline import (
    FrameTask,
    _executor,
    _surface_and_maps,
    plan_subjects,
    raymarch_frame,
    render_device,
    settings_digest,
    worker_count,
)

TINY = dict(n_ids=2, n_frames=3, n_cams=2, downsample=48, texture_size=64, prims_per_side=16, voxels=4,
            mesh_columns=24, mesh_rows=16, workers=1, headset_size=24)


def test_full_rays_give_the_restricted_renderers_images():
    from ava.synth.appearance import paint_texture

    config = SynthConfig(**TINY)
    subject, frame = 1, 1
    plan = plan_subjects(config)[subject]
    assert (plan.headset.task_of == frame).any()  # so the headset views are rendered too
    surface, uvmaps, angles = _surface_and_maps(config)
    expression = plan.expressions[frame]
    vertices = surface.vertices(plan.identity, expression)
    texture = paint_texture(plan.identity, expression, *angles)
    task = FrameTask(subject, frame, plan, config, device="cpu")
    restricted, restricted_headset = raymarch_frame(task, surface, uvmaps, angles, vertices, texture, full_rays=False)
    full, full_headset = raymarch_frame(task, surface, uvmaps, angles, vertices, texture, full_rays=True)
    assert full.shape == (2, 4096 // 48, 2668 // 48, 4)
    assert (full[..., 3] > 0.99).float().mean() > 0.1  # the head is there
    # The same samples composited in the same order; only the order of float sums differs.
    torch.testing.assert_close(full, restricted, atol=1e-3, rtol=1e-4)
    assert sorted(full_headset) == sorted(restricted_headset) and full_headset
    for index, views in full_headset.items():
        assert len(views) == 5
        for name, image in views.items():
            assert image.shape == (24, 24)
            assert image.std() > 10  # a face lit by the emitter, not a blank view
            torch.testing.assert_close(torch.from_numpy(image), torch.from_numpy(restricted_headset[index][name]),
                                       atol=1e-3, rtol=1e-4)


def test_the_restricted_renderer_stays_on_the_cpu():
    config = SynthConfig(**TINY)
    plan = plan_subjects(config)[0]
    surface, uvmaps, _ = _surface_and_maps(config)
    task = FrameTask(0, 0, plan, config, device="meta")
    with pytest.raises(ValueError, match="CPU only"):
        raymarch_frame(task, surface, uvmaps, None, None, None, full_rays=False)


def test_device_choice(monkeypatch):
    assert render_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert render_device("auto") == "cpu"
    with pytest.raises(UserError, match=r"^--device cuda: torch sees no CUDA GPU.*use --device cpu") as error:
        render_device("cuda")
    assert "\n" not in str(error.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert render_device("auto") == render_device("cuda") == "cuda:1"
    monkeypatch.setattr("os.cpu_count", lambda: 32)
    # On a GPU the workers only paint and encode: up to 16 of them, against 8 raymarching on the CPU.
    assert (worker_count(SynthConfig(), "cuda:1"), worker_count(SynthConfig(), "cpu")) == (16, 8)
    assert worker_count(SynthConfig(workers=3), "cuda:1") == 3


def test_the_device_does_not_change_what_a_set_is():
    # A set made on either device is the same set to a rerun, and the demo cache keeps its folder.
    from ava.runtime.datasets import demo_dataset_dir

    for device in ("cpu", "cuda"):
        assert settings_digest(SynthConfig(device=device)) == settings_digest(SynthConfig())
        assert demo_dataset_dir(SynthConfig(device=device)) == demo_dataset_dir(SynthConfig())


def test_workers_are_spawned_never_forked():
    # CUDA cannot be used in a forked child; the pool spawns whatever the device.
    with _executor(2) as pool:
        assert pool._mp_context.get_start_method() == "spawn"
    with _executor(1) as pool:
        assert pool is None  # one worker renders in the calling process


def test_cli_asks_for_a_gpu_on_a_machine_without_one(tmp_path, capsys, monkeypatch):
    from ava.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "-o", str(tmp_path / "out"), "--device", "cuda"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "use --device cpu" in err
    assert not (tmp_path / "out").exists()


def test_cpu_device_gives_the_default_files(tmp_path, monkeypatch):
    # On a machine without CUDA, auto is cpu: the same bytes either way, and the manifest does not
    # record the device (sets from before the flag stay valid).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = dict(TINY, downsample=96, n_frames=2, headset=False)
    generate(tmp_path / "auto", SynthConfig(**config), progress=False)
    generate(tmp_path / "cpu", SynthConfig(**config, device="cpu"), progress=False)
    files = sorted(p.relative_to(tmp_path / "auto") for p in (tmp_path / "auto").rglob("*") if p.is_file())
    assert files and all((tmp_path / "auto" / f).read_bytes() == (tmp_path / "cpu" / f).read_bytes() for f in files)
    manifest = json.loads((tmp_path / "cpu" / "synth_config.json").read_text())
    assert "device" not in manifest["config"] and "workers" not in manifest["config"]
