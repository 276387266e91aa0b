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
        trained = [folder for folder in checkpoint.identities if (self.dataset_dir / folder / "decoder").is_dir()]
        self.captures = sorted(path.parent.name for path in self.dataset_dir.glob("*/decoder") if path.is_dir())
        self.unseen = [folder for folder in self.captures if folder not in checkpoint.identities]
        self.identities = trained + self.unseen
        if not trained:
            raise UserError(f"none of the checkpoint's {len(checkpoint.identities)} identities "
                            f"(e.g. {checkpoint.identities[0]}) is in {self.dataset_dir}; pass --dataset-dir")
        self.lock = threading.Lock()  # one render at a time: they share the model and the device
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

    @torch.no_grad()
    def render(self, camera: ViewCamera, identity: str, encoding: torch.Tensor,
               background: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
        """uint8 [H,W,3]: `identity` (a capture folder of `identities`) making the expression `encoding`
        [1,16,4,4], seen by `camera`, over a flat `background` colour (0..255)."""
        from ava.runtime.images import to_uint8

        conditioning = self.identity(identity)
        with self.lock:
            image = render_view(self.model, camera, conditioning, encoding, self.idindex(identity),
                                self.reference_camera, background)
        return to_uint8(image)


@torch.no_grad()
def render_view(model, camera: ViewCamera, id_cond: dict, encoding: torch.Tensor, idindex: int, camindex: int,
                background: tuple[float, float, float]) -> torch.Tensor:
    """[3,H,W] (0..255) on the model's device: the decoder and the raymarcher for one view of the
    identity `id_cond` (the identity encoder's output) making `encoding` [1,16,4,4], with colour
    calibration row (camindex, idindex; idindex < 0 for an identity never trained on), over a flat
    `background` colour."""
    from ava.data.dataset import pixel_coordinates

    device = next(model.parameters()).device
    colour = torch.tensor(background, dtype=torch.float32, device=device)
    cameras = torch.tensor([camindex], device=device)
    identities = torch.tensor([idindex], device=device)
    if model.colorcal is not None:
        # The model adds the calibration's bias to the premultiplied colour, so where nothing is
        # hit it lands on the background (which the background model learnt to absorb). Passing
        # colour - bias as the background gives alpha * bias + (1 - alpha) * colour: the head
        # exactly as trained over a clean flat colour.
        colour = colour - model.colorcal.gain_and_bias(cameras, identities)[1][0]
    output = model(
        camera.camrot[None].to(device), camera.campos[None].to(device), camera.focal[None].to(device),
        camera.princpt[None].to(device), torch.eye(4, device=device)[None], None, None, None, None,
        pixelcoords=pixel_coordinates(camera.height, camera.width)[None].to(device),
        idindex=identities, camindex=cameras, id_cond=id_cond, expr_encoding=encoding.to(device),
        bg=colour.view(1, 3, 1, 1).expand(1, 3, camera.height, camera.width))
    return output["irgbrec"][0]
