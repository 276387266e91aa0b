"""`ava render` on a checkpoint trained for a few steps: strips, MP4, orbit, bad input; and the
image/video helpers it is built from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_train import run_cli, straight_run, tiny_dataset  # noqa: F401  (module fixtures)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def test_render_writes_strips_and_videos(straight_run, tiny_dataset, tmp_path):  # noqa: F811
    from PIL import Image

    from ava.checkpoint import load_checkpoint
    from ava.runtime.video import read_video_frames

    checkpoint = straight_run / "checkpoints" / "step_00000004.safetensors"
    identities = load_checkpoint(checkpoint).identities
    out = tmp_path / "viz"
    # No --dataset-dir: the folder recorded in the checkpoint is used.
    assert run_cli(["render", "--checkpoint", str(checkpoint), "-o", str(out), "--driver", identities[1],
                    "--driven", identities[0].split("--")[-1], "--orbit", "--orbit-frames", "4", "--fps", "5"]) == 0
    name = f"{identities[1]}_{identities[0]}"
    strips = sorted((out / name).glob("img_*.png"))
    assert len(strips) == 4  # every frame of the driver, one camera
    strip = np.asarray(Image.open(strips[0]))
    height, width = 32, 20  # sensor / 128
    assert strip.shape == (height, 3 * width + 2 * 2, 3)  # [gt | self | driven] with 2-pixel gaps
    frames = read_video_frames(out / f"{name}.mp4")
    assert len(frames) == 4 and frames[0].shape[:2] == (height, 3 * width + 4)
    # The video holds the strips (lossy, so compare loosely) and the gt panel changes over time.
    assert np.abs(frames[0][:, :width].astype(float) - strip[:, :width]).mean() < 12
    orbit = read_video_frames(out / f"{name}_orbit.mp4")
    assert len(orbit) == 4 and len(list((out / f"{name}_orbit").glob("view_*.png"))) == 4
    assert not np.array_equal(orbit[0], orbit[1])  # the camera moves


def test_render_segment_and_bad_input(straight_run, tmp_path, capsys):  # noqa: F811
    checkpoint = straight_run / "checkpoints" / "step_00000004.safetensors"
    out = tmp_path / "viz"
    assert run_cli(["render", "--checkpoint", str(checkpoint), "-o", str(out), "--segment", "EXP_jaw_open"]) == 0
    videos = list(out.glob("*+EXP_jaw_open.mp4"))
    assert len(videos) == 1
    assert run_cli(["render", "--checkpoint", str(checkpoint), "-o", str(out), "--segment", "EXP_nothing"]) == 2
    assert "segment EXP_nothing has no frames" in capsys.readouterr().err
    assert run_cli(["render", "--checkpoint", str(checkpoint), "-o", str(out), "--driven", "XYZ999"]) == 2
    assert "unknown identity XYZ999" in capsys.readouterr().err
    assert run_cli(["render", "--checkpoint", str(checkpoint), "-o", str(out), "--camera", "123"]) == 2
    assert "camera 123 was not part of training" in capsys.readouterr().err
    assert run_cli(["render", "--checkpoint", str(tmp_path / "none.safetensors"), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_orbit_views_keep_distance_and_look_at_the_centre():
    from ava.render.cross_id import orbit_views

    camrot = torch.eye(3)
    campos = torch.tensor([0.0, 0.0, -1000.0])  # looking along +z at the origin, image y down
    centre = torch.tensor([0.0, 10.0, 0.0])
    views = orbit_views(camrot, campos, centre, 8, 60.0)
    for rotation, position in views:
        torch.testing.assert_close(rotation @ rotation.T, torch.eye(3), atol=1e-5, rtol=0)
        assert torch.linalg.det(rotation) == pytest.approx(1.0, abs=1e-5)
        forward = (centre - position) / torch.linalg.norm(centre - position)
        torch.testing.assert_close(rotation[2], forward, atol=1e-5, rtol=0)
        assert float(torch.linalg.norm(position - centre)) == pytest.approx(float(torch.linalg.norm(campos - centre)),
                                                                            rel=1e-5)
        assert float(position[1]) == pytest.approx(0.0, abs=1e-3)  # swings about the camera's up (y) axis
    angles = [float(torch.atan2(p[0], -p[2])) for _, p in views]
    assert max(angles) == pytest.approx(np.radians(60), abs=0.01) and min(angles) == pytest.approx(-np.radians(60),
                                                                                                   abs=0.01)


def test_strips_and_error_images():
    from ava.runtime.images import error_image, hstack, to_uint8, vstack

    target = torch.full((3, 4, 5), 100.0)
    rendered = target.clone()
    rendered[:, 0, 0] = 90.0
    error = error_image(target, rendered)
    assert float(error[0, 0, 0]) == pytest.approx(40.0) and float(error[:, 1:].abs().sum()) == 0
    panel = to_uint8(torch.full((3, 4, 5), 300.0))
    assert panel.shape == (4, 5, 3) and panel.dtype == np.uint8 and panel.max() == 255
    strip = hstack([panel, panel[:2]], gap=1)
    assert strip.shape == (4, 11, 3) and strip[:, 5].max() == 0 and strip[3, 6:].max() == 0
    assert vstack([strip, panel], gap=3).shape == (11, 11, 3)
