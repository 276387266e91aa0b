"""Interactive frame rate of `ava view` (run on a GPU):

    python tools/bench_view.py [--checkpoint CKPT [--dataset-dir DIR]] [--frames 60] [--json OUT.json] [--profile]
                               [--model ava256|tiny] [--device cuda|cpu] [--sizes 512x334 1024x667]

Per frame the viewer runs what depends on the viewpoint: the decoder (its colours depend on the
view direction) and the raymarcher; identity and expression codes are cached. The camera swings
+-60 degrees around the head (a new view every frame, as when orbiting) at 512x334 and 1024x667
(height x width: the original's training images at downsample 8 and 4, focal lengths scaled
alike). Reported per size, medians over the frames (CUDA-synchronised):
- decode + raymarch as the viewer runs it (`ava.view.frames.ViewRenderer`: a CUDA graph per
  size) and op by op (`ava.view.avatar.render_view`, the path before the graph);
- the decoder alone;
- the whole viewer frame: render, encoding (`ava.view.frames.encode_frame`: JPEG on the GPU with
  torchvision's nvJPEG where it is installed) and the bytes on the host, ready to send; and the
  same frame the old way (op by op, pixels to the host, Pillow's JPEG).

Without --checkpoint the model is the ava256 preset, randomly initialised (80 cameras, 4
identities) on a procedural head topology of 12288 vertices, with the decoder's opacity bias
raised so that rays saturate at the surface as in a trained head (an untrained decoder is nearly
transparent, which would make the raymarcher look faster than it is). With --checkpoint (a
trained or converted ava256 checkpoint) and its dataset, the real avatar renders from its home view.
`--model tiny --device cpu --sizes 24x16` is a check of this script on a CPU, not a measurement.
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


def synthetic_avatar(device, model_size: str = "ava256"):
    """(model, id_cond, encoding, head centre [3] mm, first camera offset [3] mm, up [3], idindex,
    camindex) for a random model (the ava256 preset, or a tiny one) with an opaque head (its face
    looks towards -z)."""
    from compile_experiments import _synthetic_model

    from ava.nn.decoders import OPACITY_SCALE

    if model_size == "ava256":
        model, topology, config = _synthetic_model(batch=1)
    else:
        model, topology, config = _tiny_model(device)
    model = model.to(device).eval()
    with torch.no_grad():
        model.decoder_assembler.geodec.bias.fill_(math.log(TARGET_OPACITY) / OPACITY_SCALE)
        verts = torch.randn(1, topology.num_verts, 3, device=device) * 0.05
        texture = torch.randn(1, 3, config.uv_size, config.uv_size, device=device) * 0.5
        id_cond = model.id_encoder(verts, texture)
        encoding = torch.randn(1, 16, 4, 4, device=device) * 0.1
    centre = topology.verts.mean(dim=0).numpy().astype(np.float64)
    return model, id_cond, encoding, centre, np.array([0.0, 0.0, -1.0]), np.array([0.0, -1.0, 0.0]), 0, 0


def _tiny_model(device):
    from ava.nn.autoencoder import build_autoencoder
    from ava.nn.config import ModelConfig
    from ava.synth.head import directions, make_head_grid, to_topology

    grid = make_head_grid(32, 24)
    verts = directions(grid.theta, grid.phi) * np.array([75.0, 100.0, 95.0])
    topology = to_topology(grid, verts)
    config = ModelConfig(uv_size=64, prims_per_side=8, voxels_per_prim=8, warp_size=8, raymarch_step=8.0)
    backend = "torch" if device.type == "cpu" else None
    model = build_autoencoder(config, topology, vertmean=topology.verts.clone().float(), vertstd=20.0, num_cameras=4,
                              num_identities=1, raymarch_backend=backend)
    return model, topology, config


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


def encoded_old_way(image: torch.Tensor) -> bytes:
    """The frame as the viewer sent it before: uint8 pixels copied to the CPU, encoded by Pillow
    (JPEG at these sizes)."""
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


def median_ms(values) -> float:
    return 1000 * statistics.median(values)


@torch.no_grad()
def measure_size(avatar, renderer, cameras, device) -> dict:
    """Per-frame times of one image size (see the module docstring)."""
    from ava.view.avatar import render_view
    from ava.view.frames import encode_frame
    from ava.view.server import JPEG_QUALITY, PNG_PIXELS

    model, id_cond, encoding, _, _, _, idindex, camindex = avatar
    colour = (0.0, 0.0, 0.0)
    height, width = cameras[0].height, cameras[0].width
    format = "png" if height * width <= PNG_PIXELS else "jpeg"

    def graph_frame(camera):
        return renderer.render(camera, id_cond, encoding, idindex, camindex, colour)

    for camera in cameras[:3]:  # warm-up: Triton compiles, the size's graph is captured, caches fill
        render_view(model, camera, id_cond, encoding, idindex, camindex, colour)
        encode_frame(graph_frame(camera), format, JPEG_QUALITY)
    times = {name: [] for name in ("graph", "eager", "decoder", "whole", "whole_old")}
    covered, sizes = [], []
    for camera in cameras:
        seconds, frame = timed(lambda: graph_frame(camera), device)
        times["graph"].append(seconds)
        covered.append(float((frame.amax(dim=0) > 8).float().mean()))
        seconds, _ = timed(lambda: render_view(model, camera, id_cond, encoding, idindex, camindex, colour), device)
        times["eager"].append(seconds)
        viewpos = camera.campos[None].to(device)
        seconds, _ = timed(lambda: model.decoder_assembler(id_cond, encoding, viewpos), device)
        times["decoder"].append(seconds)
        seconds, data = timed(lambda: encode_frame(graph_frame(camera), format, JPEG_QUALITY), device)
        times["whole"].append(seconds)
        sizes.append(len(data))
        seconds, _ = timed(lambda: encoded_old_way(render_view(model, camera, id_cond, encoding, idindex, camindex,
                                                               colour)), device)
        times["whole_old"].append(seconds)
    return {"height": height, "width": width, "frames": len(cameras), "format": format,
            "decode_raymarch_ms": median_ms(times["graph"]), "fps": 1000 / median_ms(times["graph"]),
            "decode_raymarch_eager_ms": median_ms(times["eager"]), "decoder_ms": median_ms(times["decoder"]),
            "viewer_frame_ms": median_ms(times["whole"]), "viewer_fps": 1000 / median_ms(times["whole"]),
            "viewer_frame_old_ms": median_ms(times["whole_old"]), "frame_kb": statistics.median(sizes) / 1024,
            "covered_fraction": statistics.mean(covered)}


def measure(avatar, frames: int, distance: float, device, sizes=SIZES) -> list[dict]:
    from ava.view.frames import ViewRenderer

    renderer = ViewRenderer(avatar[0], device)
    _, _, _, centre, direction, up, _, _ = avatar
    return [measure_size(avatar, renderer, orbit(centre, direction, up, distance, frames, height, width), device)
            for height, width in sizes]


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


def print_table(rows: list[dict], model_name: str, gpu: str, distance: float) -> None:
    print(f"ava view frame rate: {model_name}; {gpu}; torch {torch.__version__}; camera {distance:.0f} mm "
          f"from the head, orbiting +-60 degrees")
    print("| size (HxW) | decode + raymarch (graph) | fps | op by op | decoder alone | viewer frame (render, "
          "encode, bytes on host) | fps | viewer frame before | frame | head covers |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['height']}x{row['width']} | {row['decode_raymarch_ms']:.1f} ms | {row['fps']:.1f} | "
              f"{row['decode_raymarch_eager_ms']:.1f} ms | {row['decoder_ms']:.1f} ms | {row['viewer_frame_ms']:.1f} ms | "
              f"{row['viewer_fps']:.1f} | {row['viewer_frame_old_ms']:.1f} ms | {row['frame_kb']:.0f} KiB "
              f"{row['format']} | {100 * row['covered_fraction']:.0f}% |")


def load_avatar(args, device):
    if args.checkpoint is not None:
        return checkpoint_avatar(args.checkpoint, args.dataset_dir, device), f"checkpoint {args.checkpoint}"
    if device.type != "cuda" and args.model == "ava256":
        raise SystemExit("the random ava256 model needs --device cuda (pass --model tiny or --checkpoint on a CPU)")
    name = {"ava256": "ava256 preset", "tiny": "tiny model"}[args.model]
    return synthetic_avatar(device, args.model), f"{name}, random weights, opaque head (opacity bias raised)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="an ava256 checkpoint (default: random model)")
    parser.add_argument("--dataset-dir", type=Path, default=None, help="its dataset (default: as recorded)")
    parser.add_argument("--model", choices=("ava256", "tiny"), default="ava256", help="the random model's size")
    parser.add_argument("--frames", type=int, default=60, help="views per size (median reported)")
    parser.add_argument("--distance", type=float, default=700.0, help="camera distance from the head, mm")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (slow; for a smoke run)")
    parser.add_argument("--sizes", nargs="+", default=[f"{h}x{w}" for h, w in SIZES],
                        help="image sizes HEIGHTxWIDTH (default: 512x334 1024x667; keep them small on a CPU)")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    parser.add_argument("--profile", action="store_true", help="also print a CPU+CUDA profile of one frame per size")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    avatar, model_name = load_avatar(args, device)
    sizes = [tuple(int(value) for value in size.lower().split("x")) for size in args.sizes]
    if device.type == "cpu" and max(height for height, _ in sizes) > 128:
        # The vectorised CPU raymarcher holds every (ray, primitive, step) sample: 1024x667 needs
        # tens of GB even for a small model.
        raise SystemExit("on a CPU keep --sizes at most 128 rows high (e.g. --sizes 48x32 96x64)")
    rows = measure(avatar, frames=args.frames, distance=args.distance, device=device, sizes=sizes)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print_table(rows, model_name, gpu, args.distance)
    if args.profile and device.type == "cuda":
        profile_frame(*avatar, distance=args.distance, sizes=sizes)
    if args.json:
        args.json.write_text(json.dumps({"model": model_name, "gpu": gpu, "torch": torch.__version__,
                                         "distance_mm": args.distance, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
