"""`ava view` on a checkpoint trained for a few steps, served on 127.0.0.1: the page, frames sent
over the websocket as viser's browser client receives them, the controls, the render path against
the model call of training, Ctrl-C, and (when Debian's chromium is installed) a real browser."""

from __future__ import annotations

import io
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from tests.browser import HeadlessPage, chromium_path
from tests.test_train import run_cli
from tests.viser_client import camera_message, receive_frame


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def viewer(tiny_checkpoints):
    from ava.view.config import ViewConfig
    from ava.view.server import start_viewer

    running = start_viewer(ViewConfig(checkpoint=tiny_checkpoints[1], port=0, height=32, device="cpu"))
    yield running
    running.stop()


def test_viser_and_ava_cameras_agree():
    from ava.data.calibration import look_at_rotation
    from ava.view.server import view_camera, viser_pose

    position = np.array([300.0, -120.0, 900.0])
    camrot = look_at_rotation(position, np.zeros(3), np.array([0.0, -1.0, 0.0]))
    wxyz, metres = viser_pose(camrot, position)
    camera = view_camera(wxyz, metres, fov=0.5, aspect=0.75, height=40)
    torch.testing.assert_close(camera.camrot, torch.from_numpy(camrot).float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(camera.campos, torch.from_numpy(position).float())
    assert (camera.width, camera.height) == (30, 40)
    assert float(camera.focal[1]) == pytest.approx(20 / np.tan(0.25))
    torch.testing.assert_close(camera.princpt, torch.tensor([14.5, 19.5]))


def test_small_frames_travel_losslessly():
    from ava.view.server import frame_format

    assert frame_format(np.zeros((256, 256, 3), np.uint8)) == "png"  # CPU sizes, enlarged by the browser
    assert frame_format(np.zeros((512, 334, 3), np.uint8)) == "jpeg"


def test_cpu_image_size_follows_the_primitive_count():
    from types import SimpleNamespace

    from ava.view.server import MAX_HEIGHT, most_height

    def avatar(device: str, primitives: int):
        return SimpleNamespace(device=torch.device(device),
                               model=SimpleNamespace(decoder_assembler=SimpleNamespace(nprims=primitives)))

    assert most_height(avatar("cuda", 16384), 1.5) == MAX_HEIGHT
    assert most_height(avatar("cpu", 64), 1.0) == 256  # the tiny model: the plain cap
    assert most_height(avatar("cpu", 256), 1.0) == 256 and most_height(avatar("cpu", 256), 2.0) == 242  # demo
    assert most_height(avatar("cpu", 16384), 1.0) == 42 and most_height(avatar("cpu", 16384), 2.0) == 30  # ava256
    assert most_height(avatar("cpu", 16384), 0.5) == 42  # portrait windows count as square


def test_viewer_serves_the_page_and_rendered_frames(viewer):
    from ava.view.server import viser_pose

    with urllib.request.urlopen(viewer.url, timeout=30) as response:
        assert response.status == 200
        assert b"<html" in response.read(2000).lower()
    assert viewer.url.startswith("http://127.0.0.1:")
    home = viewer.avatar.home
    wxyz, position = viser_pose(home.camrot, home.campos)
    # A browser window 300x480: frames come back 32 pixels tall at its shape.
    image = receive_frame(viewer.url, camera_message(wxyz, position, home.fov, 300, 480, home.centre / 1000,
                                                     home.up), until=lambda frame: frame.shape[0] == 32)[-1]
    assert image.shape == (32, 20, 3)
    # It is what the viewer's render path gives for that camera and the controls' state (small
    # frames travel as PNG, so exactly).
    from ava.view.server import view_camera

    expected = viewer.render(view_camera(wxyz, position, home.fov, 300 / 480, 32), viewer.scene())
    assert np.array_equal(image, expected)
    # The head is in the middle of a black background.
    assert image[12:20, 7:13].mean() > 40 and image[:3].mean() < 12 and image[-3:].mean() < 12


def test_viewer_controls_reach_the_render(viewer, monkeypatch):
    from ava.view.server import view_camera

    home = viewer.avatar.home
    camera = view_camera(*_pose(home), home.fov, 0.6, 32)
    calls = []
    original = viewer.avatar.render
    monkeypatch.setattr(viewer.avatar, "render", lambda *args: calls.append(args) or original(*args))
    first = viewer.render(camera, viewer.scene())
    assert viewer.segment.options[0] == "all frames" and viewer.frame.max == 3
    viewer.background.value = "white"
    assert viewer.render(camera, viewer.scene())[0, 0].min() > 240
    viewer.background.value = "black"
    viewer.identity.value = viewer.identity.options[1]
    assert not np.array_equal(viewer.render(camera, viewer.scene()), first)  # another identity
    assert viewer.scene().driver == viewer.scene().identity  # its own expressions
    viewer.cross.value = True
    assert not viewer.driver.disabled
    viewer.driver.value = viewer.identity.options[0]  # the first identity's expressions on the second
    scene = viewer.scene()
    assert scene.identity != scene.driver and scene.frame in [frame for _, frame in viewer.avatar.frames(scene.driver)]
    viewer.render(camera, scene)
    assert calls[-1][1] == scene.identity and torch.equal(calls[-1][2], viewer.avatar.expression(scene.driver,
                                                                                                  scene.frame))
    viewer.segment.value = "EXP_jaw_open"
    assert viewer.frame.max == 1  # a one-frame segment still gets a slider
    viewer.strength.value = 0.0  # the driver's neutral code
    viewer.render(camera, viewer.scene())
    neutral = viewer.avatar.expression(scene.driver, viewer.avatar.neutral_frame(scene.driver))
    assert torch.equal(calls[-1][2], neutral)
    viewer.segment.value = "all frames"
    viewer.play.value = True
    start = viewer.frame.value
    deadline = time.monotonic() + 5
    while viewer.frame.value == start and time.monotonic() < deadline:
        time.sleep(0.05)
    viewer.play.value = False
    assert viewer.frame.value != start  # playback advances the frame slider


def _pose(home):
    from ava.view.server import viser_pose

    return viser_pose(home.camrot, home.campos)


def test_view_render_is_the_model_of_training(tiny_checkpoints, tiny_capture_set):
    """At a dataset camera, with that frame's expression, the viewer's picture is the model call of
    training (`run_model`) with the background swapped for the flat colour."""
    from ava.checkpoint import load_checkpoint
    from ava.data.collate import collate
    from ava.runtime.datasets import checkpoint_capture
    from ava.runtime.images import to_uint8
    from ava.runtime.model import run_model
    from ava.view.avatar import Avatar, ViewCamera

    checkpoint = load_checkpoint(tiny_checkpoints[1])
    avatar = Avatar(checkpoint, tiny_capture_set, 128, torch.device("cpu"))
    identity = avatar.identities[1]
    part = checkpoint_capture(tiny_capture_set, identity, 128, checkpoint, identity=1)
    sample = part[2]
    batch = collate([sample])
    output = run_model(avatar.model, batch, outputs=("ialpha", "bg"))
    colour = torch.tensor([30.0, 60.0, 90.0]).view(3, 1, 1)
    alpha = output["ialpha"][0]
    colorcal = avatar.model.colorcal
    bias = (colorcal.bcam[sample["camindex"]] + colorcal.bident[1]).detach().view(3, 1, 1)
    expected = output["irgbrec"][0] - (1 - alpha) * output["bg"][0] + (1 - alpha) * (colour - bias)
    avatar.reference_camera = sample["camindex"]
    height, width = sample["image"].shape[-2:]
    camera = ViewCamera(sample["camrot"], sample["campos"], sample["focal"], sample["princpt"], width, height)
    image = avatar.render(camera, identity, avatar.expression(identity, sample["frameid"]), (30.0, 60.0, 90.0))
    assert np.abs(image.astype(int) - to_uint8(expected).astype(int)).max() <= 1


def test_ctrl_c_stops_the_viewer(tiny_checkpoints, monkeypatch, capsys):
    import ava.view.server

    started = []

    def interrupt(seconds):
        started.append(True)
        raise KeyboardInterrupt

    monkeypatch.setattr(ava.view.server.time, "sleep", interrupt)
    assert run_cli(["view", str(tiny_checkpoints[1]), "--port", "0", "--height", "16", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert started and "http://127.0.0.1:" in err and "stopping the viewer" in err
    url = err.split("open ", 1)[1].split()[0]
    with pytest.raises(OSError):  # nothing listens there any more
        urllib.request.urlopen(url, timeout=5)


def test_view_bad_input(tiny_checkpoints, tmp_path, capsys):
    assert run_cli(["view", str(tmp_path / "none.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_cli(["view", str(tiny_checkpoints[1]), "--height", "4"]) == 2
    assert "--height must be between" in capsys.readouterr().err
    assert run_cli(["view", str(tiny_checkpoints[1]), "--height", "512", "--device", "cpu"]) == 2
    assert "--height is at most 256 for this model on a CPU" in capsys.readouterr().err
    assert run_cli(["view", str(tiny_checkpoints[1]), "--fps", "0"]) == 2
    assert "--fps must be positive" in capsys.readouterr().err


@pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_view_in_headless_chromium(viewer, tmp_path):
    """Chromium loads the page, viser's client connects, reports its camera and shows the frames."""
    deadline = time.monotonic() + 60
    with HeadlessPage(viewer.url, width=1000, height=640) as page:
        while not any(renderer.frames_sent for renderer in list(viewer.renderers.values())):
            assert time.monotonic() < deadline, "the page never asked for a frame"
            time.sleep(0.2)
        while True:  # the frame reaches the page, and the canvas fades in
            screenshot = page.screenshot()
            picture = np.asarray(Image.open(io.BytesIO(screenshot)).convert("RGB")).astype(float)
            # The avatar in the middle of the canvas, on the black background (the panel is on the right).
            centre, corner = picture[220:420, 300:500], picture[560:620, 100:200]
            if (corner.mean() < 20 and centre.mean() > corner.mean() + 20) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        text = page.call("Runtime.evaluate", {"expression": "document.body.innerText"})["result"]["value"]
    (tmp_path / "view.png").write_bytes(screenshot)
    assert picture.shape == (640, 1000, 3)
    assert corner.mean() < 20 and centre.mean() > corner.mean() + 20
    for control in ("identity", "cross-identity", "segment", "strength", "reset camera"):
        assert control in text


# --- beyond this machine: the token (issue 24) --------------------------------------------------

def test_a_viewer_on_every_interface_admits_only_requests_with_its_token(tiny_checkpoints):
    """The page with the printed URL's token sets a cookie; the page's files and viser's websocket
    (which the browser opens without the URL's query) are admitted with that cookie; anything
    without the token is refused, HTTP and websocket alike."""
    import urllib.error

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from ava.view.config import ViewConfig
    from ava.view.server import start_viewer, viser_pose

    viewer = start_viewer(ViewConfig(checkpoint=tiny_checkpoints[1], host="0.0.0.0", port=0, height=32, device="cpu"))
    try:
        assert viewer.token and len(viewer.token) >= 32 and viewer.url.endswith(f"/?token={viewer.token}")
        base = viewer.url.split("?")[0]
        for url in (base, base + "?token=wrong", base + "index.html", base + "?token=" + viewer.token[:-1]):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url, timeout=30)
            assert refused.value.code == 403, url
        with urllib.request.urlopen(viewer.url, timeout=30) as response:
            assert response.status == 200 and b"<html" in response.read(2000).lower()
            cookie = response.headers["Set-Cookie"].split(";")[0]
        assert viewer.token in cookie
        page = urllib.request.Request(base, headers={"Cookie": cookie})
        with urllib.request.urlopen(page, timeout=30) as response:
            assert response.status == 200
        import viser

        with pytest.raises(InvalidStatus) as refused:
            connect(base.replace("http://", "ws://"), subprotocols=[f"viser-v{viser.__version__}"], open_timeout=30)
        assert refused.value.response.status_code == 403
        home = viewer.avatar.home
        wxyz, position = viser_pose(home.camrot, home.campos)
        image = receive_frame(viewer.url, camera_message(wxyz, position, home.fov, 300, 480, home.centre / 1000, home.up),
                              headers={"Cookie": cookie}, until=lambda frame: frame.shape[0] == 32)[-1]
        assert image.shape == (32, 20, 3)
    finally:
        viewer.stop()


def test_the_token_is_printed_and_loopback_needs_none(tiny_checkpoints, monkeypatch, capsys):
    import ava.view.server

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(ava.view.server.time, "sleep", interrupt)
    monkeypatch.setenv("COLUMNS", "400")
    assert run_cli(["view", str(tiny_checkpoints[1]), "--host", "0.0.0.0", "--port", "0", "--height", "16",
                    "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "/?token=" in err.split("open ", 1)[1].split()[0] and "from other machines: http://" in err
    assert "requests without the token are refused" in err
    assert run_cli(["view", str(tiny_checkpoints[1]), "--port", "0", "--height", "16", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "token" not in err
