"""The web viewer: a viser server whose scene background is the avatar rendered from each browser's
camera.

viser serves the page and keeps, per connected browser, the orbit camera (position, orientation,
field of view, window shape); every camera move or control change asks that browser's render
thread for a new frame, which renders the latest state only (stale requests are dropped) and
sends it as the scene's background image. While the camera moves, frames render at half height
and the full-size frame follows once it stops; a browser's first frame comes at a quarter of the
height, under a "rendering the first frame..." notice. viser's world is the head frame in metres.

Listening beyond this machine (any --host but a loopback one), the viewer admits only requests
that carry a random token, as Jupyter does (`TokenGate`): the printed URL holds it; the page it
opens gets a cookie with it, which the page's scripts and websocket (viser's client opens that
without the URL's query) then carry. Anything else is answered 403.
"""

from __future__ import annotations

import hashlib
import http
import io
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ava.view.avatar import Avatar, ViewCamera

if TYPE_CHECKING:  # annotations only: torch is imported where a frame is rendered
    import torch

MM_PER_UNIT = 1000.0  # viser's world unit is the metre; the head frame is in mm
MOVING_SECONDS = 0.25  # a camera update younger than this means the user is still dragging
BACKGROUNDS = {"black": (0.0, 0.0, 0.0), "grey": (96.0, 96.0, 96.0), "white": (255.0, 255.0, 255.0)}
ALL_FRAMES = "all frames"
JPEG_QUALITY = 90
# Frames up to this many pixels travel as PNG: the browser enlarges small frames (CPU renders)
# several times, which would magnify JPEG's 8x8 blocks and its halved colour resolution.
PNG_PIXELS = 256 * 256
MIN_HEIGHT, MAX_HEIGHT = 16, 2048  # rendered image height, pixels
FIRST_FRAME_SHRINK = 4  # a browser's first frame is this many times smaller than the full one, so it comes at once
# On a CPU the raymarcher's vectorised path holds the (ray, primitive) pairs that pass its
# bounding test at once: memory grows with pixels x primitives (the demo model, 256 primitives,
# took 1.4 GB at 256x384), so the image is capped there: in a 2:1 window 242 rows for the demo
# model, 30 for the ava256 model's 16384 primitives.
MAX_CPU_HEIGHT = 256
CPU_PIXEL_PRIMITIVES = 3e7


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_PARAMETER = "token"


class TokenGate:
    """Admits an HTTP or websocket request that carries `token`: as `?token=` in its URL (the
    response then sets a cookie with it) or in that cookie. Everything else gets 403."""

    def __init__(self, token: str) -> None:
        self.token = token
        # Named after the token, so that viewers on other ports of the same host keep their own.
        self.cookie = "ava-view-" + hashlib.sha256(token.encode()).hexdigest()[:12]

    def _matches(self, value: str | None) -> bool:
        return value is not None and secrets.compare_digest(value.encode(), self.token.encode())

    def _in_url(self, path: str) -> bool:
        return any(self._matches(value) for value in parse_qs(urlsplit(path).query).get(TOKEN_PARAMETER, []))

    def _in_cookie(self, header: str | None) -> bool:
        for pair in (header or "").split(";"):
            name, _, value = pair.strip().partition("=")
            if name == self.cookie and self._matches(value):
                return True
        return False

    def wrap(self, process_request):
        """websockets' `process_request` hook: the gate, then viser's own (which serves the page
        and its files, and lets websocket handshakes through)."""

        def guarded(connection, request):
            in_url = self._in_url(request.path)
            if not in_url and not self._in_cookie(request.headers.get("Cookie")):
                return connection.respond(http.HTTPStatus.FORBIDDEN, "ava view: open the URL with the token that "
                                                                     "ava view printed when it started\n")
            response = process_request(connection, request) if process_request is not None else None
            if in_url and response is not None:
                response.headers["Set-Cookie"] = f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            return response

        return guarded


@contextmanager
def _gated(gate: TokenGate | None):
    """While a viser server starts, its websockets server takes `gate` in front of viser's request
    handler. viser has no hook for this: it passes the handler, a closure, straight to
    `websockets.asyncio.server.serve`, which its server thread calls before ViserServer() returns."""
    if gate is None:
        yield
        return
    import websockets.asyncio.server as websocket_server

    original = websocket_server.serve

    def serve(*args, process_request=None, **kwargs):
        return original(*args, process_request=gate.wrap(process_request), **kwargs)

    websocket_server.serve = serve
    try:
        yield
    finally:
        websocket_server.serve = original


def view_camera(wxyz, position, fov: float, aspect: float, height: int) -> ViewCamera:
    """A viser camera (orientation `wxyz` and `position` of the camera in the world, OpenCV axes,
    metres; vertical `fov` in radians) as an ava camera `height` pixels tall with the window's
    `aspect` (width / height)."""
    from viser.transforms import SO3

    camera_to_world = SO3(np.asarray(wxyz, dtype=np.float64)).as_matrix()
    width = max(1, int(round(height * aspect)))
    return ViewCamera.centred(camera_to_world.T, np.asarray(position, dtype=np.float64) * MM_PER_UNIT, fov, width,
                              height)


def frame_format(image: np.ndarray) -> str:
    """"png" for small frames, else "jpeg" (at JPEG_QUALITY): large GPU frames at a fraction of
    the bytes."""
    return "png" if image.shape[0] * image.shape[1] <= PNG_PIXELS else "jpeg"


def viser_pose(camrot: np.ndarray, campos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(wxyz, position in metres) of an ava camera (camrot head -> camera, campos in mm)."""
    from viser.transforms import SO3

    return SO3.from_matrix(np.asarray(camrot, dtype=np.float64).T).wxyz, np.asarray(campos) / MM_PER_UNIT


@dataclass(frozen=True)
class Scene:
    """What to render, apart from the camera: the snapshot a render thread takes."""

    identity: str
    driver: str
    frame: str
    strength: float
    height: int
    background: tuple[float, float, float]


class ClientRenderer(threading.Thread):
    """Renders for one browser: waits for requests, renders the newest state, sends it."""

    def __init__(self, viewer: "Viewer", client) -> None:
        super().__init__(name=f"ava-view-client-{client.client_id}", daemon=True)
        self.viewer = viewer
        self.client = client
        self.condition = threading.Condition()
        self.dirty = True
        self.refine = False
        self.stopped = False
        self.last_camera_update = 0.0
        self.frames_sent = 0
        self.status = client.gui.add_markdown("rendering the first frame...", order=1000)
        # Until the first frame arrives the page would be empty: say what is happening, and make
        # the first frame a small one (FIRST_FRAME_SHRINK), which the full-size frame follows.
        self.waiting = client.add_notification("ava view", "rendering the first frame...", loading=True,
                                               with_close_button=False)

    def request(self, camera_moved: bool = False) -> None:
        with self.condition:
            if camera_moved:
                self.last_camera_update = time.monotonic()
            self.dirty = True
            self.condition.notify()

    def stop(self) -> None:
        with self.condition:
            self.stopped = True
            self.condition.notify()

    def _next(self) -> bool | None:
        """Waits for work: True for a preview, False for a full frame, None to stop."""
        with self.condition:
            while not self.dirty and not self.stopped:
                if not self.condition.wait(timeout=MOVING_SECONDS if self.refine else None) and self.refine:
                    self.refine = False
                    return False  # the camera has come to rest: the full-size frame
            if self.stopped:
                return None
            self.dirty = False
            preview = not self.frames_sent or time.monotonic() - self.last_camera_update < MOVING_SECONDS
            self.refine = preview
            return preview

    def run(self) -> None:
        while True:
            preview = self._next()
            if preview is None:
                return
            try:
                self.render(preview)
            except Exception as error:  # shown in the page and on the console, the viewer keeps running
                self.status.content = f"**render failed:** {error}"
                self.viewer.report(f"render failed for browser {self.client.client_id}: {error!r}")

    def render(self, preview: bool) -> bytes:
        scene = self.viewer.scene()
        camera = self.client.camera
        shrink = FIRST_FRAME_SHRINK if not self.frames_sent else 2
        height = max(MIN_HEIGHT, scene.height // shrink) if preview else scene.height
        height = min(height, self.viewer.most_height(camera.aspect))
        view = view_camera(camera.wxyz, camera.position, camera.fov, camera.aspect, height)
        started = time.perf_counter()
        format = "png" if view.height * view.width <= PNG_PIXELS else "jpeg"
        data = self.viewer.render_encoded(view, scene, format)
        seconds = time.perf_counter() - started
        if self.stopped:
            return data  # the browser has gone
        send_background(self.client, format, data)
        self.frames_sent += 1
        if self.waiting is not None:
            self.waiting.remove()
            self.waiting = None
        self.status.content = (f"{view.width}x{view.height} (WxH){' (preview)' if preview else ''}: {seconds * 1000:.0f} ms "
                               f"per frame ({1 / max(seconds, 1e-6):.1f} fps), decode + raymarch on "
                               f"{self.viewer.avatar.device.type}")
        return data


def send_background(client, format: str, data: bytes) -> None:
    """Shows an encoded frame as the browser's scene background. viser's own call takes pixels and
    encodes them on the CPU; the message it sends carries the bytes, so ava sends that message
    with its own (GPU-encoded) bytes, and decodes them for viser's call where the message type
    is not there."""
    try:
        from viser import _messages

        message = _messages.BackgroundImageMessage(format=format, rgb_data=data, depth_data=None)
        client.scene._websock_interface.queue_message(message)
    except (ImportError, AttributeError, TypeError):
        from PIL import Image

        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        client.scene.set_background_image(pixels, format=format, jpeg_quality=JPEG_QUALITY)


def _labels(folders: list[str], unseen: list[str] = ()) -> dict[str, str]:
    """Dropdown label -> capture folder: the subject id where it is unique, else the folder; those
    in `unseen` (never trained on) are marked."""
    subjects = [folder.split("--")[-1] for folder in folders]
    return {(subject if subjects.count(subject) == 1 else folder) + (" (unseen)" if folder in unseen else ""): folder
            for subject, folder in zip(subjects, folders)}


class Viewer:
    """The viser server, its controls and one render thread per connected browser."""

    def __init__(self, avatar: Avatar, host: str, port: int, height: int, fps: float, report=print) -> None:
        import warnings

        import viser

        # A browser that closes while its frame renders gets that frame after it has gone; viser
        # warns about the undeliverable message, which is expected here.
        warnings.filterwarnings("ignore", message="Queued a BackgroundImageMessage on a closed connection")

        self.avatar = avatar
        self.report = report
        self.fps = fps
        self.token = None if host in LOOPBACK_HOSTS else secrets.token_urlsafe(24)
        with _gated(TokenGate(self.token) if self.token else None):
            self.server = viser.ViserServer(host=host, port=port, label="ava", verbose=False)
        self.host = host
        self.renderers: dict[int, ClientRenderer] = {}
        self.lock = threading.Lock()
        self._sequence: list[str] = []
        try:
            self.server.scene.set_up_direction(tuple(float(value) for value in avatar.home.up))
            self._set_home(self.server.initial_camera)
            self._build_controls(height)
        except BaseException:
            self.server.stop()  # the server thread is already listening
            raise
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)
        self.stopped = threading.Event()
        self.player = threading.Thread(target=self._play, name="ava-view-player", daemon=True)
        self.player.start()

    @property
    def url(self) -> str:
        """The page's URL (with the token when the viewer listens beyond this machine)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        query = f"/?{TOKEN_PARAMETER}={self.token}" if self.token else ""
        return f"http://{host}:{self.server.get_port()}{query}"

    def _set_home(self, camera) -> None:
        """Points a viser camera (a browser's, or the initial one) at the head from the home view."""
        home = self.avatar.home
        camera.fov = home.fov
        camera.look_at = tuple(home.centre / MM_PER_UNIT)
        if hasattr(camera, "up_direction"):  # a browser's camera; the initial camera calls it `up`
            camera.up_direction = tuple(home.up)
        else:
            camera.up = tuple(home.up)
        camera.position = tuple(home.campos / MM_PER_UNIT)

    # --- controls ---------------------------------------------------------------------------------

    def _build_controls(self, height: int) -> None:
        gui = self.server.gui
        avatar = self.avatar
        self.identity_labels = _labels(avatar.identities, avatar.unseen)
        self.capture_labels = _labels(avatar.captures)
        with gui.add_folder("Avatar"):
            self.identity = gui.add_dropdown("identity", list(self.identity_labels),
                                             hint="whose appearance (neutral conditioning) is rendered")
            self.cross = gui.add_checkbox("cross-identity", False,
                                          hint="drive this identity with another capture's expressions")
            self.driver = gui.add_dropdown("expressions of", list(self.capture_labels),
                                           initial_value=self._capture_label(self.identity_folder), disabled=True)
        with gui.add_folder("Expression"):
            self.segment = gui.add_dropdown("segment", [ALL_FRAMES])
            self.frame = gui.add_slider("frame", min=0, max=1, step=1, initial_value=0)
            self.play = gui.add_checkbox("play", False, hint=f"play the segment at {self.fps:g} frames per second")
            self.strength = gui.add_slider("strength", min=0.0, max=2.0, step=0.05, initial_value=1.0,
                                           hint="the expression code scaled about the capture's neutral one "
                                                "(0: neutral, 1: as captured)")
        with gui.add_folder("View"):
            self.height = gui.add_slider("height (px)", min=MIN_HEIGHT, max=self.most_height(1.0), step=8,
                                         initial_value=height)
            self.background = gui.add_dropdown("background", list(BACKGROUNDS))
            self.reset = gui.add_button("reset camera")
        self.identity.on_update(lambda _: self._identity_changed())
        self.cross.on_update(lambda _: self._identity_changed())
        self.driver.on_update(lambda _: self._driver_changed())
        self.segment.on_update(lambda _: self._segment_changed())
        for handle in (self.frame, self.strength, self.height, self.background):
            handle.on_update(lambda _: self.request_all())
        self.reset.on_click(lambda event: self._set_home(event.client.camera) if event.client else None)
        self._driver_changed()

    def most_height(self, aspect: float) -> int:
        """The largest image height to render at this window shape (width / height)."""
        return most_height(self.avatar, aspect)

    def _capture_label(self, folder: str) -> str:
        return next(label for label, value in self.capture_labels.items() if value == folder)

    @property
    def identity_folder(self) -> str:
        return self.identity_labels[self.identity.value]

    def _identity_changed(self) -> None:
        self.driver.disabled = not self.cross.value
        if not self.cross.value:
            self.driver.value = self._capture_label(self.identity_folder)  # calls _driver_changed if it changes
        self.request_all()

    def _driver_changed(self) -> None:
        frames = self.avatar.frames(self.capture_labels[self.driver.value])
        segments = list(dict.fromkeys(segment for segment, _ in frames))
        options = [ALL_FRAMES] + segments
        self.segment.options = options
        if self.segment.value not in options:
            self.segment.value = ALL_FRAMES
        self._segment_changed()

    def _segment_changed(self) -> None:
        frames = self.avatar.frames(self.capture_labels[self.driver.value])
        chosen = self.segment.value
        with self.lock:
            self._sequence = [frame for segment, frame in frames if chosen in (ALL_FRAMES, segment)]
        self.frame.max = max(1, len(self._sequence) - 1)
        self.frame.value = min(self.frame.value, len(self._sequence) - 1)
        self.request_all()

    def scene(self) -> Scene:
        """The current state of the controls."""
        with self.lock:
            sequence = list(self._sequence)
        return Scene(
            identity=self.identity_folder,
            driver=self.capture_labels[self.driver.value],
            frame=sequence[min(int(self.frame.value), len(sequence) - 1)],
            strength=float(self.strength.value),
            height=int(self.height.value),
            background=BACKGROUNDS[self.background.value],
        )

    def code(self, scene: Scene) -> torch.Tensor:
        """The scene's expression code: the frame's, scaled about the driver's neutral code by the strength."""
        avatar = self.avatar
        code = avatar.expression(scene.driver, scene.frame)
        if scene.strength != 1.0:
            neutral = avatar.expression(scene.driver, avatar.neutral_frame(scene.driver))
            code = neutral + scene.strength * (code - neutral)
        return code

    def render(self, camera: ViewCamera, scene: Scene) -> np.ndarray:
        """uint8 [H,W,3] of `scene` seen by `camera`."""
        return self.avatar.render(camera, scene.identity, self.code(scene), scene.background)

    def render_encoded(self, camera: ViewCamera, scene: Scene, format: str) -> bytes:
        """`render` encoded as the page receives it (`format` "jpeg" or "png")."""
        return self.avatar.render_encoded(camera, scene.identity, self.code(scene), scene.background, format,
                                          JPEG_QUALITY)

    # --- browsers ---------------------------------------------------------------------------------

    def _connect(self, client) -> None:
        renderer = ClientRenderer(self, client)
        with self.lock:
            self.renderers[client.client_id] = renderer
        client.camera.on_update(lambda _: renderer.request(camera_moved=True))
        renderer.start()

    def _disconnect(self, client) -> None:
        with self.lock:
            renderer = self.renderers.pop(client.client_id, None)
        if renderer is not None:
            renderer.stop()

    def request_all(self) -> None:
        with self.lock:
            renderers = list(self.renderers.values())
        for renderer in renderers:
            renderer.request()

    def _play(self) -> None:
        while not self.stopped.wait(1.0 / self.fps):
            if self.play.value and len(self._sequence) > 1:
                self.frame.value = (int(self.frame.value) + 1) % len(self._sequence)

    def stop(self) -> None:
        self.stopped.set()
        with self.lock:
            renderers = list(self.renderers.values())
        for renderer in renderers:
            renderer.stop()
        self.server.stop()
        for renderer in renderers:
            renderer.join(timeout=10)
        self.player.join(timeout=5)


def most_height(avatar: Avatar, aspect: float) -> int:
    """MAX_HEIGHT on a GPU; on a CPU the height whose image (at `aspect` = width / height, taken as
    at least 1) keeps pixels x primitives within CPU_PIXEL_PRIMITIVES, at most MAX_CPU_HEIGHT."""
    if avatar.device.type != "cpu":
        return MAX_HEIGHT
    primitives = avatar.model.decoder_assembler.nprims
    fitting = int((CPU_PIXEL_PRIMITIVES / (primitives * max(aspect, 1.0))) ** 0.5)
    return max(MIN_HEIGHT, min(MAX_CPU_HEIGHT, fitting))


def serve(config, console) -> int:
    """`ava view`: builds the avatar and the viewer, prints the URL, serves until Ctrl-C."""
    viewer = start_viewer(config, console)
    console.print(f"[bold]ava view[/]: open {viewer.url} in a browser (Ctrl-C to stop)", highlight=False,
                  soft_wrap=True)
    if viewer.token:
        import socket

        console.print(f"from other machines: http://{socket.gethostname()}:{viewer.server.get_port()}/?"
                      f"{TOKEN_PARAMETER}={viewer.token} (requests without the token are refused)", highlight=False,
                      soft_wrap=True)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping the viewer")
    finally:
        viewer.stop()
    return 0


def start_viewer(config, console=None) -> Viewer:
    """The viewer of `config` (an ava.view.config.ViewConfig), serving in background threads."""
    from ava.checkpoint import load_checkpoint
    from ava.errors import UserError
    from ava.runtime.datasets import checkpoint_downsample, resolve_dataset_dir
    from ava.runtime.device import select_device

    if config.fps <= 0:
        raise UserError("--fps must be positive")
    if config.height is not None and not MIN_HEIGHT <= config.height <= MAX_HEIGHT:
        raise UserError(f"--height must be between {MIN_HEIGHT} and {MAX_HEIGHT} pixels")
    device = select_device(config.device)
    if not 0 <= config.port < 65536:
        raise UserError(f"--port {config.port} is not a port number")
    checkpoint = load_checkpoint(config.checkpoint)
    dataset_dir = resolve_dataset_dir(config.dataset_dir, checkpoint)
    avatar = Avatar(checkpoint, dataset_dir, checkpoint_downsample(checkpoint), device)
    most = most_height(avatar, 1.0)
    if config.height is not None and config.height > most:
        raise UserError(f"--height is at most {most} for this model on a CPU (the raymarcher's memory grows with "
                        "pixels x primitives); render on a GPU for larger images")
    height = config.height or (512 if device.type == "cuda" else min(96, most))
    return Viewer(avatar, config.host, config.port, height, config.fps,
                  report=console.print if console is not None else print)
