"""The avatar behind `ava view`: a checkpoint's model with cached identity conditionings and
expression codes, rendered from any camera in the head frame.

Per frame only what depends on the viewpoint runs: the decoder (its colours depend on the view
direction) and the raymarcher; the identity encoder runs once per identity and the expression
encoder once per (capture, frame). Colour calibration uses one reference camera (the capture's
most frontal training camera) and the rendered identity's row; the background is a flat colour
(the model's background rows belong to the dome's cameras, not to a novel view).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ava.errors import UserError

EXPRESSION_CACHE = 512  # expression codes kept (each is 256 floats; the frames they come from are not)


@dataclass(frozen=True)
class ViewCamera:
    """A pinhole camera in the head frame: camrot [3,3] (head -> camera, rows x right, y down,
    z forward), campos [3] (mm), focal and princpt [2] (pixels), and the image size."""

    camrot: torch.Tensor
    campos: torch.Tensor
    focal: torch.Tensor
    princpt: torch.Tensor
    width: int
    height: int

    @staticmethod
    def centred(camrot, campos, fov: float, width: int, height: int) -> "ViewCamera":
        """A camera with square pixels, vertical field of view `fov` (radians) and the principal
        point at the image centre."""
        focal = (height / 2) / math.tan(fov / 2)
        return ViewCamera(torch.as_tensor(camrot, dtype=torch.float32), torch.as_tensor(campos, dtype=torch.float32),
                          torch.tensor([focal, focal]), torch.tensor([(width - 1) / 2, (height - 1) / 2]),
                          int(width), int(height))


@dataclass(frozen=True)
class HomeView:
    """Where the viewer starts: a frontal camera of the dome (head frame, mm) and its vertical
    field of view; `centre` is the head's centre and `up` the camera's up direction."""

    camera_id: str
    camrot: np.ndarray
    campos: np.ndarray
    fov: float
    centre: np.ndarray
    up: np.ndarray


class Avatar:
    """A checkpoint ready to render. identities: the capture folders that can be rendered: the
    trained ones found in the dataset, then the dataset's captures the checkpoint never trained on
    (`unseen`: held-out subjects and others, rendered from their own neutral frame with the neutral
    colour calibration, docs/evaluation.md); captures: every capture folder in the dataset
    (expression sources, trained or not)."""

    def __init__(self, checkpoint, dataset_dir: Path, downsample: int, device: torch.device) -> None:
        from ava.runtime.cameras import frontal_cameras
        from ava.runtime.datasets import checkpoint_capture, held_out_cameras

        self.checkpoint = checkpoint
        self.dataset_dir = Path(dataset_dir)
        self.downsample = downsample
        self.device = device
        model = checkpoint.build_autoencoder(raymarch_backend="torch" if device.type == "cpu" else None)
        self.model = model.to(device).eval()
        trained = [folder for folder in checkpoint.identities if self._has_frames(folder)]
        self.captures = sorted(path.parent.name for path in self.dataset_dir.glob("*/decoder")
                               if self._has_frames(path.parent.name))
        self.unseen = [folder for folder in self.captures if folder not in checkpoint.identities]
        self.identities = trained + self.unseen
        if not trained:
            raise UserError(f"none of the checkpoint's {len(checkpoint.identities)} identities "
                            f"(e.g. {checkpoint.identities[0]}) is in {self.dataset_dir} with its frames; pass --dataset-dir")
        self.lock = threading.RLock()  # one render at a time: they share the model and the device
        self._renderer = None
        self.cache_lock = threading.Lock()  # browsers' render threads share the expression cache
        self._parts: dict[str, tuple[object, dict[str, int]]] = {}  # folder -> (samples, frame id -> index)
        self._identity: dict[str, dict] = {}
        self._expressions: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        first = checkpoint_capture(self.dataset_dir, self.identities[0], downsample, checkpoint)
        held_out = held_out_cameras(checkpoint)
        camera_id = next((camera for camera in frontal_cameras([first], exclude=held_out)
                          if camera in checkpoint.cameras), checkpoint.cameras[0])
        self.reference_camera = checkpoint.cameras.index(camera_id)
        self.home = self._home_view(first.reader, camera_id)

    def _has_frames(self, folder: str) -> bool:
        """Whether a capture folder holds its frames (a partial download, e.g. only the calibration
        and statistics that `ava convert` needs of every training capture, does not)."""
        from ava.data.layout import CaptureLayout

        return all(path.is_file() for path in CaptureLayout(self.dataset_dir / folder).required_files())

    def _home_view(self, reader, camera_id: str) -> HomeView:
        from ava.data.calibration import camera_in_head_frame

        camera = next(entry for entry in reader.cameras if entry.camera_id == camera_id)
        camrot, campos = camera_in_head_frame(camera, reader.load_head_pose(reader.neutral_frame).astype(np.float64))
        fov = 2 * math.atan((camera.height / 2) / camera.focal[1])
        centre = self.checkpoint.stats.vertmean.astype(np.float64).mean(axis=0)
        return HomeView(camera_id, camrot, campos, fov, centre, -camrot[1])

    # --- data -------------------------------------------------------------------------------------

    def _part(self, folder: str):
        """(one camera's samples of a capture, frame id -> sample index): its meshes and textures
        (the image is not used)."""
        from ava.runtime.datasets import checkpoint_capture

        if folder not in self._parts:
            from ava.data.calibration import read_calibration
            from ava.data.layout import CaptureLayout

            layout = CaptureLayout(self.dataset_dir / folder)
            cameras = [entry.camera_id for entry in read_calibration(layout.calibration)]
            # One camera whose images are there: only its meshes, textures and frame list are used.
            cameras = [camera for camera in cameras if layout.image_zip(camera).is_file()][:1] or cameras[:1]
            index = self.checkpoint.identities.index(folder) if folder in self.checkpoint.identities else None
            part = checkpoint_capture(self.dataset_dir, folder, self.downsample, self.checkpoint, cameras=cameras,
                                      identity=index)
            self._parts[folder] = (part, {part.sample_ids(i)[0]: i for i in range(len(part))})
        return self._parts[folder]

    def frames(self, folder: str) -> list[tuple[str, str]]:
        """(segment, frame id) of every usable frame of a capture, in frame-list order."""
        part, frame_index = self._part(folder)
        segment_of = {frame.frame_id: frame.segment for frame in part.reader.frames}
        return [(segment_of[frame], frame) for frame in frame_index]

    def neutral_frame(self, folder: str) -> str:
        return self._part(folder)[0].reader.neutral_frame.frame_id

    def _inputs(self, sample: dict, keys: tuple[str, ...]) -> list[torch.Tensor]:
        from ava.runtime.model import fit_texture, uv_size

        size = uv_size(self.model)
        values = []
        for key in keys:
            value = sample[key][None].to(self.device)
            values.append(fit_texture(value, size) if "tex" in key else value)
        return values

    @torch.no_grad()
    def identity(self, folder: str) -> dict:
        """The identity encoder's output for a capture's neutral frame (cached)."""
        if folder not in self._identity:
            if folder not in self.identities:
                raise UserError(f"{folder} is not a capture in {self.dataset_dir}")
            sample = self._part(folder)[0][0]
            neut_verts, neut_avgtex = self._inputs(sample, ("neut_verts", "neut_avgtex"))
            with self.lock:
                self._identity[folder] = self.model.id_encoder(neut_verts, neut_avgtex)
        return self._identity[folder]

    @torch.no_grad()
    def expression(self, folder: str, frame_id: str) -> torch.Tensor:
        """The expression code [1,16,4,4] (the bottleneck's mean) of one frame of a capture, relative
        to that capture's neutral frame (cached)."""
        key = (folder, frame_id)
        with self.cache_lock:
            if key in self._expressions:
                self._expressions.move_to_end(key)
                return self._expressions[key]
        part, frame_index = self._part(folder)
        if frame_id not in frame_index:
            raise UserError(f"frame {frame_id} of {folder} has no usable sample")
        sample = part.load_sample(frame_index[frame_id])
        verts, avgtex, neut_verts, neut_avgtex = self._inputs(sample, ("verts", "avgtex", "neut_verts", "neut_avgtex"))
        with self.lock:
            encoding, _, _ = self.model.bottleneck(self.model.expr_encoder(verts, avgtex, neut_verts, neut_avgtex))
        with self.cache_lock:
            self._expressions[key] = encoding
            while len(self._expressions) > EXPRESSION_CACHE:
                self._expressions.popitem(last=False)
        return encoding

    def idindex(self, folder: str) -> int:
        """The capture's row in the identity tables, UNSEEN_IDENTITY for one never trained on."""
        from ava.nn.colorcal import UNSEEN_IDENTITY

        identities = self.checkpoint.identities
        return identities.index(folder) if folder in identities else UNSEEN_IDENTITY

    # --- rendering --------------------------------------------------------------------------------

    def render_frame(self, camera: ViewCamera, identity: str, encoding: torch.Tensor,
                     background: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> torch.Tensor:
        """uint8 [3,H,W] on the device (ava.view.frames.ViewRenderer: a CUDA graph per size on a
        GPU; valid until the next render): `identity` (a capture folder of `identities`) making the
        expression `encoding` [1,16,4,4], seen by `camera`, over a flat `background` colour (0..255)."""
        conditioning = self.identity(identity)
        with self.lock:
            return self.renderer.render(camera, conditioning, encoding, self.idindex(identity),
                                        self.reference_camera, background)

    def render(self, camera: ViewCamera, identity: str, encoding: torch.Tensor,
               background: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
        """render_frame as uint8 [H,W,3] on the CPU."""
        with self.lock:
            return self.render_frame(camera, identity, encoding, background).permute(1, 2, 0).cpu().numpy()

    def render_encoded(self, camera: ViewCamera, identity: str, encoding: torch.Tensor,
                       background: tuple[float, float, float], format: str, quality: int) -> bytes:
        """render_frame encoded as `format` ("jpeg" or "png"; ava.view.frames.encode_frame: JPEG on
        the GPU where it can be)."""
        from ava.view.frames import encode_frame

        with self.lock:
            return encode_frame(self.render_frame(camera, identity, encoding, background), format, quality)

    @property
    def renderer(self):
        if self._renderer is None:
            from ava.view.frames import ViewRenderer

            self._renderer = ViewRenderer(self.model, self.device)
        return self._renderer


@torch.no_grad()
def render_view(model, camera: ViewCamera, id_cond: dict, encoding: torch.Tensor, idindex: int, camindex: int,
                background: tuple[float, float, float]) -> torch.Tensor:
    """[3,H,W] (0..255) on the model's device, op by op: the decoder and the raymarcher for one
    view of the identity `id_cond` (the identity encoder's output) making `encoding` [1,16,4,4],
    with colour calibration row (camindex, idindex; idindex < 0 for an identity never
    trained on), over a flat `background` colour
    (ava.view.frames.render_inputs; ViewRenderer replays it from a CUDA graph)."""
    from ava.view.frames import render_inputs, view_inputs

    device = next(model.parameters()).device
    return render_inputs(model, view_inputs(camera, id_cond, encoding, idindex, camindex, background, device))
