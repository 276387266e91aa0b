"""The web viewer: a viser server whose scene background is the avatar rendered from each browser's
camera.

viser serves the page and keeps, per connected browser, the orbit camera (position, orientation,
field of view, window shape); every camera move or control change asks that browser's render
thread for a new frame, which renders the latest state only (stale requests are dropped) and
sends it as the scene's background image. While the camera moves, frames render at half height
and the full-size frame follows once it stops. viser's world is the head frame in metres.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from ava.view.avatar import Avatar, ViewCamera

MM_PER_UNIT = 1000.0  # viser's world unit is the metre; the head frame is in mm
MOVING_SECONDS = 0.25  # a camera update younger than this means the user is still dragging
BACKGROUNDS = {"black": (0.0, 0.0, 0.0), "grey": (96.0, 96.0, 96.0), "white": (255.0, 255.0, 255.0)}
ALL_FRAMES = "all frames"
JPEG_QUALITY = 90
# Frames up to this many pixels travel as PNG: the browser enlarges small frames (CPU renders)
# several times, which would magnify JPEG's 8x8 blocks and its halved colour resolution.
PNG_PIXELS = 256 * 256
MIN_HEIGHT, MAX_HEIGHT = 16, 2048  # rendered image height, pixels
# On a CPU the raymarcher's vectorised path holds the (ray, primitive) pairs that pass its
# bounding test at once: memory grows with pixels x primitives (the demo model, 256 primitives,
# took 1.4 GB at 256x384), so the image is capped there: in a 2:1 window 242 rows for the demo
# model, 30 for the ava256 model's 16384 primitives.
MAX_CPU_HEIGHT = 256
CPU_PIXEL_PRIMITIVES = 3e7


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
        self.status = client.gui.add_markdown("waiting for the first frame", order=1000)

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
            preview = time.monotonic() - self.last_camera_update < MOVING_SECONDS
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

    def render(self, preview: bool) -> np.ndarray:
        scene = self.viewer.scene()
        camera = self.client.camera
        height = max(MIN_HEIGHT, scene.height // 2) if preview else scene.height
        height = min(height, self.viewer.most_height(camera.aspect))
        view = view_camera(camera.wxyz, camera.position, camera.fov, camera.aspect, height)
        started = time.perf_counter()
        image = self.viewer.render(view, scene)
        seconds = time.perf_counter() - started
        if self.stopped:
            return image  # the browser has gone
        self.client.scene.set_background_image(image, format=frame_format(image), jpeg_quality=JPEG_QUALITY)
        self.frames_sent += 1
        self.status.content = (f"{view.width}x{view.height}{' (preview)' if preview else ''}: {seconds * 1000:.0f} ms "
                               f"per frame ({1 / max(seconds, 1e-6):.1f} fps), decode + raymarch on "
                               f"{self.viewer.avatar.device.type}")
        return image


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
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.server.get_port()}"

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

    def render(self, camera: ViewCamera, scene: Scene) -> np.ndarray:
        """uint8 [H,W,3] of `scene` seen by `camera`: the code is the frame's, scaled about the
        driver's neutral code by the strength."""
        avatar = self.avatar
        code = avatar.expression(scene.driver, scene.frame)
        if scene.strength != 1.0:
            neutral = avatar.expression(scene.driver, avatar.neutral_frame(scene.driver))
            code = neutral + scene.strength * (code - neutral)
        return avatar.render(camera, scene.identity, code, scene.background)

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
    console.print(f"[bold]ava view[/]: open {viewer.url} in a browser (Ctrl-C to stop)", highlight=False)
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
