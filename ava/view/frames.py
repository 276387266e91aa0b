"""Viewer frames at interactive rates: decode + raymarch replayed from a CUDA graph per image size,
and the frame encoded on the GPU.

A viewer frame runs the decoder (its colours depend on the view direction) and the raymarcher
for one camera; identity conditioning and expression codes come from caches. Launched op by op,
the ava256 model's frame is bound by the host (hundreds of small launches); `ViewRenderer`
captures it once per image size (the second time that size is asked for, so that sizes seen once
while a window is resized cost no capture) and replays it: the camera, codes, colour
calibration row and background are copied into the graph's fixed input buffers first. On a CPU
it runs the same function eagerly.

`encode_frame` turns the uint8 frame into JPEG or PNG bytes: on a GPU with torchvision's nvJPEG
encoder only the compressed bytes cross to the host (about 1/10 of the pixels); otherwise the
pixels are copied and encoded with Pillow.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

GRAPH_SIZES = 4  # captured image sizes kept (each holds its own GPU memory)
# Captured graphs keep their raymarcher list capacity; moving the camera closer than at capture
# lengthens the lists (correct, slower). This factor of headroom costs tens of MB at 1024x667.
CAPACITY_HEADROOM = 4.0


_PIXELS: dict[tuple, torch.Tensor] = {}


def pixel_grid(height: int, width: int, device: torch.device) -> torch.Tensor:
    """[1,H,W,2] pixel coordinates on `device` (cached per size: the H2D copy of a 1024x667 grid
    would cost a millisecond a frame)."""
    from ava.data.dataset import pixel_coordinates

    key = (height, width, str(device))
    if key not in _PIXELS:
        while len(_PIXELS) >= 2 * GRAPH_SIZES:
            _PIXELS.pop(next(iter(_PIXELS)))
        _PIXELS[key] = pixel_coordinates(height, width)[None].to(device)
    return _PIXELS[key]


def view_inputs(camera, id_cond: dict, encoding: torch.Tensor, idindex: int, camindex: int,
                background, device: torch.device) -> dict:
    """The tensors one view needs (batch of one), on `device`."""
    return {
        "camrot": camera.camrot[None].to(device, torch.float32), "campos": camera.campos[None].to(device, torch.float32),
        "focal": camera.focal[None].to(device, torch.float32), "princpt": camera.princpt[None].to(device, torch.float32),
        "pixelcoords": pixel_grid(camera.height, camera.width, device),
        "id_cond": id_cond, "encoding": encoding.to(device),
        "idindex": torch.tensor([idindex], device=device), "camindex": torch.tensor([camindex], device=device),
        "background": torch.as_tensor(background, dtype=torch.float32).to(device),
    }


def render_inputs(model, inputs: dict) -> torch.Tensor:
    """[3,H,W] float 0..255: the decoder and the raymarcher for the view in `inputs` (view_inputs),
    over a flat background colour; data-independent launches only (capturable)."""
    colour = inputs["background"]
    if model.colorcal is not None:
        # The model adds the calibration's bias to the premultiplied colour, so where nothing is
        # hit it lands on the background (which the background model learnt to absorb). Passing
        # colour - bias as the background gives alpha * bias + (1 - alpha) * colour: the head
        # exactly as trained over a clean flat colour.
        colour = colour - model.colorcal.gain_and_bias(inputs["camindex"], inputs["idindex"])[1][0]
    height, width = inputs["pixelcoords"].shape[1:3]
    device = colour.device
    output = model(
        inputs["camrot"], inputs["campos"], inputs["focal"], inputs["princpt"], torch.eye(4, device=device)[None],
        None, None, None, None, pixelcoords=inputs["pixelcoords"], idindex=inputs["idindex"],
        camindex=inputs["camindex"], id_cond=inputs["id_cond"], expr_encoding=inputs["encoding"],
        bg=colour.view(1, 3, 1, 1).expand(1, 3, height, width))
    return output["irgbrec"][0]


def to_uint8_chw(image: torch.Tensor) -> torch.Tensor:
    """[3,H,W] float 0..255 -> uint8 [3,H,W] on the same device (rounded, clipped)."""
    return image.clamp(0, 255).round().to(torch.uint8)


def _copy_into(target, source) -> None:
    if isinstance(target, torch.Tensor):
        target.copy_(source, non_blocking=True)
    elif isinstance(target, dict):
        for key in target:
            _copy_into(target[key], source[key])
    else:
        for item, value in zip(target, source):
            _copy_into(item, value)


def _static_like(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {key: _static_like(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_static_like(item) for item in value)
    return value


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict
    frame: torch.Tensor  # uint8 [3,H,W], the graph's output
    id_cond: object = None  # the identity conditioning last copied in (copied again only when it changes)


class ViewRenderer:
    """Renders views of `model` (in eval mode): `render(...)` -> uint8 [3,H,W] on the device (a
    graph's output buffer: valid until the next render of that size). See the module docstring."""

    def __init__(self, model, device: torch.device, graphs: bool | None = None) -> None:
        self.model = model
        self.device = device
        self.graphs_enabled = device.type == "cuda" if graphs is None else graphs
        self._graphs: OrderedDict[tuple[int, int], _Graph] = OrderedDict()
        self._seen: set[tuple[int, int]] = set()
        self.lock = threading.Lock()

    @torch.no_grad()
    def render(self, camera, id_cond: dict, encoding: torch.Tensor, idindex: int, camindex: int,
               background) -> torch.Tensor:
        inputs = view_inputs(camera, id_cond, encoding, idindex, camindex, background, self.device)
        size = (camera.height, camera.width)
        with self.lock:
            if not self.graphs_enabled or (size not in self._graphs and size not in self._seen):
                self._seen.add(size)
                return to_uint8_chw(render_inputs(self.model, inputs))
            captured = self._graphs.get(size) or self._capture(size, inputs)
            self._graphs.move_to_end(size)
            for key, value in inputs.items():
                if key == "id_cond" and value is captured.id_cond:
                    continue  # the same identity: its (large) conditioning is in place already
                _copy_into(captured.inputs[key], value)
            captured.id_cond = id_cond
            captured.graph.replay()
            return captured.frame

    def _capture(self, size, inputs) -> _Graph:
        from ava.kernels import raymarch_triton

        while len(self._graphs) >= GRAPH_SIZES:
            self._graphs.popitem(last=False)
        static = _static_like(inputs)
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        scale = raymarch_triton.CAPACITY.scale
        raymarch_triton.CAPACITY.scale = scale * CAPACITY_HEADROOM
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads serve browsers
                frame = to_uint8_chw(render_inputs(self.model, static))
        finally:
            raymarch_triton.CAPACITY.scale = scale
        self._graphs[size] = _Graph(graph, static, frame, None)
        return self._graphs[size]


def frame_format(height: int, width: int, png_pixels: int) -> str:
    """"png" for frames of at most `png_pixels` pixels, else "jpeg"."""
    return "png" if height * width <= png_pixels else "jpeg"


_GPU_JPEG = {"broken": False}


def encode_frame(frame: torch.Tensor, format: str, quality: int) -> bytes:
    """uint8 [3,H,W] (any device) -> JPEG or PNG bytes; JPEG on the GPU through torchvision's
    nvJPEG encoder when the frame is on one and torchvision is installed (else Pillow)."""
    if format == "jpeg" and frame.is_cuda and not _GPU_JPEG["broken"]:
        try:
            from torchvision.io import encode_jpeg

            return bytes(encode_jpeg(frame.contiguous(), quality=quality).cpu().numpy())
        except Exception:  # no torchvision, or one built without nvJPEG: Pillow from now on
            _GPU_JPEG["broken"] = True
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(frame.permute(1, 2, 0).cpu().numpy()))
    if format == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
