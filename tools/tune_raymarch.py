"""Tile-size sweep and time breakdown of the Triton raymarcher on the reference workload.

    python tools/tune_raymarch.py [--distance 1000] [--tiles 8x8,8x4,16x8] [--super 4]

For each tile shape (TILE_HxTILE_W; one warp per 32 rays) prints forward and forward+backward
medians, the per-tile list lengths, and a CPU+GPU profile of one forward+backward for the first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_raymarch import _with_grad, time_call  # noqa: E402
from head_scene import head_scene  # noqa: E402

from ava.kernels import mvp_raymarch  # noqa: E402
from ava.kernels import raymarch_triton  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distance", type=float, default=700.0)
    parser.add_argument("--tiles", default="8x8,8x4,16x8,8x16,16x16")
    parser.add_argument("--super", type=int, default=4, help="super-tile side, in tiles")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--random-order", action="store_true")
    args = parser.parse_args()

    scene = head_scene(distance_mm=args.distance, random_order=args.random_order)
    inputs = _with_grad(scene)
    cotangent = torch.randn(*scene["raypos"].shape[:3], 4, device="cuda")
    for index, spec in enumerate(args.tiles.split(",")):
        tile_h, tile_w = (int(v) for v in spec.split("x"))
        raymarch_triton.TILE_H, raymarch_triton.TILE_W = tile_h, tile_w
        raymarch_triton.SUPER_TILE = args.super
        lists = raymarch_triton.build_tile_lists(
            scene["raypos"], scene["raydir"], scene["tminmax"], scene["primpos"], scene["primscale"]
        )
        counts = lists.count.float()
        busy = counts[counts > 0]

        def forward():
            return mvp_raymarch(**inputs)

        def forward_backward():
            out = mvp_raymarch(**inputs)
            torch.autograd.backward(out, cotangent)

        def cull():
            return raymarch_triton.build_tile_lists(
                scene["raypos"], scene["raydir"], scene["tminmax"], scene["primpos"], scene["primscale"]
            )

        cull_ms = time_call(cull, args.reps)
        fwd = time_call(forward, args.reps)
        fb = time_call(forward_backward, args.reps)
        print(f"tile {spec:6s} super {args.super}: cull {cull_ms:7.3f} ms  forward {fwd:7.3f} ms  fwd+bwd {fb:7.3f} ms  "
              f"lists: {int(busy.numel())} busy tiles, mean {busy.mean():.1f}, max {int(busy.max())}", flush=True)
        if index == 0:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                forward_backward()
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
