"""Interactive frame rate of `ava view` (run on a GPU):

    python tools/bench_view.py [--checkpoint CKPT [--dataset-dir DIR]] [--frames 60] [--json OUT.json] [--profile]

Per frame the viewer runs what depends on the viewpoint: the decoder (its colours depend on the
view direction) and the raymarcher, through `ava.view.avatar.render_view`, the function the viewer
calls; identity and expression codes are cached. The camera swings +-60 degrees around the head
(a new view every frame, as when orbiting) at 512x334 and 1024x667 (height x width: the original's
training images at downsample 8 and 4, focal lengths scaled alike). Reported per size: the median
frame time of decode + raymarch (CUDA-synchronised), of the decoder alone, and of the whole
viewer frame with the copy to the CPU and the encoding the page receives (JPEG at these sizes).

Without --checkpoint the model is the ava256 preset, randomly initialised (80 cameras, 4
identities) on a procedural head topology of 12288 vertices, with the decoder's opacity bias
raised so that rays saturate at the surface as in a trained head (an untrained decoder is nearly
transparent, which would make the raymarcher look faster than it is). With --checkpoint (a
trained or converted ava256 checkpoint) and its dataset, the real avatar renders from its home view.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = ((512, 334), (1024, 667))  # (height, width)
ORIGINAL_FOCAL = 10355.0  # pixels at the 4096-row sensor (the dome cameras' typical focal length)
SENSOR_HEIGHT = 4096
TARGET_OPACITY = 70.0  # template alpha at which rays saturate within a few samples (tools/head_scene.py)


def synthetic_avatar(device):
    """(model, id_cond, encoding, head centre [3] mm, first camera offset [3] mm, up [3], idindex,
    camindex) for a random ava256 model with an opaque head (its face looks towards -z)."""
    from compile_experiments import _synthetic_model

    from ava.nn.decoders import OPACITY_SCALE

    model, topology, config = _synthetic_model(batch=1)
    model = model.to(device).eval()
    with torch.no_grad():
        model.decoder_assembler.geodec.bias.fill_(math.log(TARGET_OPACITY) / OPACITY_SCALE)
        verts = torch.randn(1, topology.num_verts, 3, device=device) * 0.05
        texture = torch.randn(1, 3, config.uv_size, config.uv_size, device=device) * 0.5
        id_cond = model.id_encoder(verts, texture)
        encoding = torch.randn(1, 16, 4, 4, device=device) * 0.1
    centre = topology.verts.mean(dim=0).numpy().astype(np.float64)
    return model, id_cond, encoding, centre, np.array([0.0, 0.0, -1.0]), np.array([0.0, -1.0, 0.0]), 0, 0


def checkpoint_avatar(path: Path, dataset_dir: Path | None, device):
    from ava.checkpoint import load_checkpoint
    from ava.runtime.datasets import checkpoint_downsample, resolve_dataset_dir
    from ava.view.avatar import Avatar

    checkpoint = load_checkpoint(path)
    avatar = Avatar(checkpoint, resolve_dataset_dir(dataset_dir, checkpoint), checkpoint_downsample(checkpoint),
                    device)
    identity = avatar.identities[0]
    encoding = avatar.expression(identity, avatar.neutral_frame(identity))
    home = avatar.home
    return (avatar.model, avatar.identity(identity), encoding, home.centre, home.campos - home.centre, home.up,
            avatar.idindex(identity), avatar.reference_camera)


def orbit(centre: np.ndarray, direction: np.ndarray, up: np.ndarray, distance: float, frames: int, height: int,
          width: int):
    """ViewCameras `distance` mm from `centre` along `direction`, swinging +-60 degrees about `up`."""
    from ava.data.calibration import look_at_rotation, rotation_about_axis
    from ava.view.avatar import ViewCamera

    focal = ORIGINAL_FOCAL * height / SENSOR_HEIGHT
    fov = 2 * math.atan((height / 2) / focal)
    offset = distance * direction / np.linalg.norm(direction)
    cameras = []
    for index in range(frames):
        angle = math.radians(60.0) * math.sin(2 * math.pi * index / frames)
        position = centre + rotation_about_axis(up, angle) @ offset
        cameras.append(ViewCamera.centred(look_at_rotation(position, centre, up), position, fov, width, height))
    return cameras


def timed(function, device) -> tuple[float, object]:
    """(seconds, result) of one call, the GPU synchronised on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, result


def encoded(image: torch.Tensor) -> bytes:
    """The viewer's frame as the page receives it: uint8 on the CPU, encoded as ava view encodes
    it (JPEG for these sizes)."""
    from PIL import Image

    from ava.runtime.images import to_uint8
    from ava.view.server import JPEG_QUALITY, frame_format

    pixels = to_uint8(image)
    buffer = io.BytesIO()
    if frame_format(pixels) == "png":
        Image.fromarray(pixels).save(buffer, format="PNG")
    else:
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


@torch.no_grad()
def measure(model, id_cond, encoding, centre, direction, up, idindex, camindex, frames: int, distance: float,
            device, sizes=SIZES) -> list[dict]:
    from ava.view.avatar import render_view

    rows = []
    for height, width in sizes:
        cameras = orbit(centre, direction, up, distance, frames, height, width)
        for camera in cameras[:3]:  # warm-up: Triton compiles, caches fill
            render_view(model, camera, id_cond, encoding, idindex, camindex, (0.0, 0.0, 0.0))
        render, decode, whole, covered = [], [], [], []
        for camera in cameras:
            seconds, image = timed(lambda: render_view(model, camera, id_cond, encoding, idindex, camindex,
                                                       (0.0, 0.0, 0.0)), device)
            render.append(seconds)
            viewpos = camera.campos[None].to(device)
            seconds, _ = timed(lambda: model.decoder_assembler(id_cond, encoding, viewpos), device)
            decode.append(seconds)
            seconds, _ = timed(lambda: encoded(render_view(model, camera, id_cond, encoding, idindex, camindex,
                                                        (0.0, 0.0, 0.0))), device)
            whole.append(seconds)
            covered.append(float((image.amax(dim=0) > 8).float().mean()))
        median = statistics.median(render)
        rows.append({"height": height, "width": width, "frames": frames,
                     "decode_raymarch_ms": 1000 * median, "fps": 1 / median,
                     "decoder_ms": 1000 * statistics.median(decode),
                     "viewer_frame_ms": 1000 * statistics.median(whole), "viewer_fps": 1 / statistics.median(whole),
                     "covered_fraction": statistics.mean(covered)})
    return rows


@torch.no_grad()
def profile_frame(model, id_cond, encoding, centre, direction, up, idindex, camindex, distance: float,
                  sizes) -> None:
    """A CPU and CUDA profile of one viewer frame per size (after a warm-up frame): where the
    frame's time goes, host side included (launches, synchronisations, Python)."""
    from torch.profiler import ProfilerActivity, profile

    from ava.view.avatar import render_view

    for height, width in sizes:
        camera = orbit(centre, direction, up, distance, 4, height, width)[1]
        render_view(model, camera, id_cond, encoding, idindex, camindex, (0.0, 0.0, 0.0))
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
            render_view(model, camera, id_cond, encoding, idindex, camindex, (0.0, 0.0, 0.0))
            torch.cuda.synchronize()
        print(f"\n{height}x{width}, by CUDA time:")
        print(profiler.key_averages().table(sort_by="cuda_time_total", row_limit=15))
        print(f"{height}x{width}, by CPU time:")
        print(profiler.key_averages().table(sort_by="cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="an ava256 checkpoint (default: random model)")
    parser.add_argument("--dataset-dir", type=Path, default=None, help="its dataset (default: as recorded)")
    parser.add_argument("--frames", type=int, default=60, help="views per size (median reported)")
    parser.add_argument("--distance", type=float, default=700.0, help="camera distance from the head, mm")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (slow; for a smoke run)")
    parser.add_argument("--sizes", nargs="+", default=[f"{h}x{w}" for h, w in SIZES],
                        help="image sizes HEIGHTxWIDTH (default: 512x334 1024x667; keep them small on a CPU)")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    parser.add_argument("--profile", action="store_true", help="also print a CPU+CUDA profile of one frame per size")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.checkpoint is not None:
        avatar = checkpoint_avatar(args.checkpoint, args.dataset_dir, device)
        model_name = f"checkpoint {args.checkpoint}"
    else:
        if device.type != "cuda":
            raise SystemExit("the random ava256 model needs --device cuda (pass --checkpoint for a smaller model)")
        avatar = synthetic_avatar(device)
        model_name = "ava256 preset, random weights, opaque head (opacity bias raised)"
    sizes = [tuple(int(value) for value in size.lower().split("x")) for size in args.sizes]
    if device.type == "cpu" and max(height for height, _ in sizes) > 128:
        # The vectorised CPU raymarcher holds every (ray, primitive, step) sample: 1024x667 needs
        # tens of GB even for a small model.
        raise SystemExit("on a CPU keep --sizes at most 128 rows high (e.g. --sizes 48x32 96x64)")
    rows = measure(*avatar, frames=args.frames, distance=args.distance, device=device, sizes=sizes)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"ava view frame rate: {model_name}; {gpu}; torch {torch.__version__}; camera {args.distance:.0f} mm "
          f"from the head, orbiting +-60 degrees")
    print("| size (HxW) | decode + raymarch | fps | decoder alone | viewer frame (+ copy, encoding) | fps | head covers |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['height']}x{row['width']} | {row['decode_raymarch_ms']:.1f} ms | {row['fps']:.1f} | "
              f"{row['decoder_ms']:.1f} ms | {row['viewer_frame_ms']:.1f} ms | {row['viewer_fps']:.1f} | "
              f"{100 * row['covered_fraction']:.0f}% |")
    if args.profile and device.type == "cuda":
        profile_frame(*avatar, distance=args.distance, sizes=sizes)
    if args.json:
        args.json.write_text(json.dumps({"model": model_name, "gpu": gpu, "torch": torch.__version__,
                                         "distance_mm": args.distance, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
