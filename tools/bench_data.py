"""Data loading throughput: samples/s of one loader process at 512x333 on a synthetic capture.

Compares ava's CaptureDataset (zip handles kept open, PLY read straight from the binary body,
AVIF decoded once with Pillow) with a naive loader that does what the original does per sample:
reopen every zip and parse the PLY row by row through Python lists. Both run in this process, on
the same capture, in the same run.

    python tools/bench_data.py [--dir DIR] [--samples N]

DIR defaults to a temporary folder; a synthetic capture (1 subject, 4 cameras, 6 frames, 1024^2
textures, ~7300 vertices, images stored at 333x512) is generated there first unless present.
"""

from __future__ import annotations

import argparse
import io
import platform
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch


def naive_sample(layout, camera, frame: str, size: tuple[int, int]) -> dict:
    """One sample the original way: every zip reopened, the PLY turned into rows of Python lists."""
    import plyfile
    from PIL import Image

    frame = f"{int(frame):06d}"
    with zipfile.ZipFile(layout.vertices_zip) as archive:
        ply = plyfile.PlyData.read(io.BytesIO(archive.read(f"{frame}.ply")))
    verts = np.array([list(record) for record in ply["vertex"].data], dtype=np.float32)
    with zipfile.ZipFile(layout.texture_zip) as archive:
        texture = np.asarray(Image.open(io.BytesIO(archive.read(f"color/{frame}.avif"))).convert("RGB"))
    with zipfile.ZipFile(layout.head_pose_zip) as archive:
        pose = np.loadtxt(io.BytesIO(archive.read(f"{frame}.txt")), dtype=np.float32)
    with zipfile.ZipFile(layout.image_zip(camera)) as archive:
        image = Image.open(io.BytesIO(archive.read(f"cam{camera}/{frame}.avif"))).convert("RGB").resize(size)
    return {
        "verts": torch.from_numpy(verts),
        "avgtex": torch.from_numpy(texture.transpose(2, 0, 1).astype(np.float32)),
        "headpose": torch.from_numpy(pose),
        "image": torch.from_numpy(np.asarray(image).transpose(2, 0, 1).astype(np.float32)),
    }


def timed(function, count: int) -> float:
    """Samples per second over `count` calls (after one warm-up call)."""
    function(0)
    start = time.perf_counter()
    for index in range(count):
        function(index)
    return count / (time.perf_counter() - start)


def main() -> None:
    from ava.data.dataset import CaptureDataset
    from ava.data.ids import read_ids_csv
    from ava.synth import SynthConfig, ensure_generated

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "ava-bench-data")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = SynthConfig(n_ids=1, n_frames=6, n_cams=4, downsample=8, texture_size=1024, prims_per_side=32,
                         mesh_columns=128, mesh_rows=56)
    ensure_generated(args.dir, config)
    root = args.dir / read_ids_csv(args.dir / "ids.csv")[0].folder
    dataset = CaptureDataset(root, downsample=8)
    size = (dataset.width, dataset.height)
    pairs = [dataset.sample_ids(i % len(dataset)) for i in range(len(dataset))]

    def ava_loader(index: int) -> None:
        sample = dataset[index % len(dataset)]
        assert sample["image"].shape == (3, 512, 333)

    def naive_loader(index: int) -> None:
        frame, camera = pairs[index % len(pairs)]
        naive_sample(dataset.reader.layout, camera, frame, size)

    ava_rate = timed(ava_loader, args.samples)
    naive_rate = timed(naive_loader, args.samples)
    print(f"machine: {platform.processor() or platform.machine()}, torch threads 1, {len(dataset)} samples, "
          f"images {dataset.height}x{dataset.width}, textures {dataset.stats.texmean.shape[1]}^2, "
          f"{dataset.stats.vertmean.shape[0]} vertices")
    print(f"ava CaptureDataset : {ava_rate:7.1f} samples/s per worker")
    print(f"naive loader       : {naive_rate:7.1f} samples/s per worker")
    print(f"speed-up           : {ava_rate / naive_rate:7.2f}x")


if __name__ == "__main__":
    main()
