"""Benchmark of the MVP raymarcher on the reference workload (see tools/head_scene.py).

    python tools/bench_raymarch.py [--original PATH] [--scenes head,mesh] [--reps 20]
                                   [--vector-reps 5] [--no-vectorised] [--scan-blocks 1,32,64] [--corners]
                                   [--against MODULE:FUNCTION] [--json OUT.json] [--profile]

Times forward (inputs requiring grad, as in training) and forward+backward (random cotangent)
with CUDA events after warm-up, median over --reps, for the Triton path in decoder order and in
random primitive order, on each scene: `head` (the synthetic head of head_scene.py, cameras
0.7 m away) and `mesh` (the original repository's registered mesh assets/021924.bin on
assets/face_topology.obj, cameras 1 m away; needs --original). Per scene it also times the
culling alone and prints the tile lists' lengths against their capacities. `--scan-blocks`
times the march at other SCAN_BLOCK values (list entries tested per vector operation; 1 is the
entry-at-a-time scan of the first kernels) on the decoder-order scenes and checks that the
output does not change; `--corners` times the trilinear fetch of all 8 corners at once (the
first kernels' form, more registers) against one at a time. Then torch.compile of the vectorised PyTorch path; and the original CUDA
raymarcher in the same run, on the same inputs: `--original PATH` is a checkout of
facebookresearch/ava-256 whose extensions/mvpraymarch was built in place (for Hopper: its own
setup.py with the arch set to sm_90; tools/gpu_speed_suite.sh does this), or `--against` names
any callable with the original's signature f(raypos, raydir, stepsize, tminmax, (primpos,
primrot, primscale), template, warp). Prints agreement with ava's output, the ratio ava /
original and peak memory.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ava.kernels import mvp_raymarch  # noqa: E402
from ava.kernels import raymarch_triton, vectorized  # noqa: E402

GRAD_NAMES = ("primpos", "primrot", "primscale", "template")


def _with_grad(scene):
    return {k: (v.detach().clone().requires_grad_(True) if k in GRAD_NAMES else v) for k, v in scene.items()}


def time_call(fn, reps: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def measure(name, render, scene, reps, results, warmup: int = 10):
    """render(scene_with_grad) -> rayrgba. Records forward, forward+backward and peak memory."""
    inputs = _with_grad(scene)
    cotangent = torch.randn_like(scene["raypos"][..., :1].expand(*scene["raypos"].shape[:3], 4).contiguous())

    def forward():
        return render(inputs)

    def forward_backward():
        for v in inputs.values():
            if isinstance(v, torch.Tensor) and v.grad is not None:
                v.grad = None
        out = render(inputs)
        torch.autograd.backward(out, cotangent)

    fwd_ms = time_call(forward, reps, warmup)
    fb_ms = time_call(forward_backward, reps, warmup)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    forward_backward()
    torch.cuda.synchronize()
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    with torch.no_grad():
        out = render(inputs).detach()
    results[name] = dict(forward_ms=fwd_ms, forward_backward_ms=fb_ms, peak_extra_mb=peak_mb)
    print(f"{name:34s} forward {fwd_ms:8.3f} ms   forward+backward {fb_ms:8.3f} ms   peak +{peak_mb:8.1f} MiB", flush=True)
    return out


def profile_once(scene) -> None:
    from torch.profiler import ProfilerActivity, profile

    inputs = _with_grad(scene)
    out = mvp_raymarch(**inputs)
    torch.autograd.backward(out, torch.ones_like(out))
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = mvp_raymarch(**inputs)
        torch.autograd.backward(out, torch.ones_like(out))
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))


def original_raymarcher(path: str):
    """The original's `mvpraymarch` from a checkout with its extension built in place."""
    root = Path(path).expanduser().resolve()
    built = list((root / "extensions" / "mvpraymarch").glob("mvpraymarchlib*.so"))
    if not built:
        sys.exit(f"{root}/extensions/mvpraymarch has no built mvpraymarchlib*.so; build the original's extension "
                 "in place first (its setup.py, with the arch set for this GPU)")
    sys.path.insert(0, str(root))
    from extensions.mvpraymarch.mvpraymarch import mvpraymarch

    return mvpraymarch


def load_against(spec: str):
    module_name, _, function_name = spec.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def build_scene(name: str, order: str, args):
    from head_scene import head_scene, mesh_scene

    if name == "head":
        return head_scene(random_order=order == "random", distance_mm=args.distance)
    if args.original is None:
        sys.exit("the mesh scene needs --original PATH (a facebookresearch/ava-256 checkout)")
    return mesh_scene(args.original, random_order=order == "random", distance_mm=args.mesh_distance)


def list_statistics(key: str, scene, reps: int, results: dict) -> None:
    """Culling alone (time), and the fine tile lists' lengths and totals against their capacities."""
    args = (scene["raypos"], scene["raydir"], scene["tminmax"], scene["primpos"], scene["primscale"])
    n, h, w, _ = scene["raypos"].shape
    capacities = raymarch_triton.list_capacities(n, h, w, scene["primpos"].shape[1])
    cull_ms = time_call(lambda: raymarch_triton.build_tile_lists(*args, capacities), reps)
    lists = raymarch_triton.build_tile_lists(*args, capacities)
    counts = lists.count.float()
    busy = counts[counts > 0]
    coarse_total, fine_total = (int(value) for value in lists.totals())
    stats = {"cull_ms": cull_ms, "busy_tiles": int(busy.numel()), "mean_list": float(busy.mean()),
             "max_list": int(busy.max()), "fine_total": fine_total, "fine_capacity": capacities[1],
             "coarse_total": coarse_total, "coarse_capacity": capacities[0]}
    results[f"{key}_lists"] = stats
    print(f"[{key}] culling {cull_ms:.3f} ms; fine lists: {stats['busy_tiles']} busy tiles, mean {stats['mean_list']:.1f}"
          f", max {stats['max_list']}; entries fine {fine_total} of {capacities[1]}, coarse {coarse_total} of "
          f"{capacities[0]}", flush=True)


def kernel_sweep(key: str, scene, setting: str, values: list, label: str, reps: int, results: dict, reference):
    """The march with raymarch_triton.<setting> at each value; the largest output difference from
    `reference` (the default's output)."""
    default = getattr(raymarch_triton, setting)
    worst = 0.0
    try:
        for value in values:
            setattr(raymarch_triton, setting, value)
            out = measure(f"ava triton ({key}, {label} {value})", lambda s: mvp_raymarch(**s), scene, reps, results)
            worst = max(worst, float((out - reference).abs().max()))
    finally:
        setattr(raymarch_triton, setting, default)
    results[f"{key}_{setting.lower()}_max_abs_difference"] = worst
    print(f"[{key}] {setting} {values}: largest output difference from the default {worst:.2e}", flush=True)


def measure_scene(scene_name: str, order: str, args, other, other_name, results: dict, summary: list):
    """ava (and the other raymarcher) on one scene in one primitive order; returns ava's output."""
    key = f"{scene_name}/{order}"
    scene = build_scene(scene_name, order, args)
    alpha_probe = mvp_raymarch(**scene)[..., 3]
    results[f"{key}_coverage"] = float((alpha_probe > 0.01).float().mean())
    results[f"{key}_saturated"] = float((alpha_probe >= 0.999).float().mean())
    print(f"[{key}] covered {results[f'{key}_coverage']:.3f}  saturated {results[f'{key}_saturated']:.3f}")
    ours = measure(f"ava triton ({key})", lambda s: mvp_raymarch(**s), scene, args.reps, results)
    list_statistics(key, scene, args.reps, results)
    if args.scan_blocks and order == "decoder":  # the same samples: 0 expected
        kernel_sweep(key, scene, "SCAN_BLOCK", args.scan_blocks, "scan", args.reps, results, ours)
    if args.corners and order == "decoder":  # sums in another order: float32 rounding expected
        kernel_sweep(key, scene, "TRILINEAR_CORNERS_AT_ONCE", [True], "corners at once", args.reps, results, ours)
    if other is not None:
        def render_other(s):
            return other(s["raypos"], s["raydir"], s["stepsize"], s["tminmax"],
                         (s["primpos"], s["primrot"], s["primscale"]), s["template"], s["warp"])

        other_out = measure(f"{other_name} ({key})", render_other, scene, args.reps, results)
        diff = (other_out - ours).abs()
        results[f"{key}_against_max_abs_alpha"] = float(diff[..., 3].max())
        results[f"{key}_against_max_abs_rgb"] = float(diff[..., :3].max())
        results[f"{key}_against_mean_abs_rgb"] = float(diff[..., :3].mean())
        print(f"{other_name} vs ava ({key}): max |d alpha| {diff[..., 3].max():.2e}  "
              f"max |d rgb| {diff[..., :3].max():.2e}  mean |d rgb| {diff[..., :3].mean():.2e}")
        summary.append((key, results[f"ava triton ({key})"], results[f"{other_name} ({key})"]))
    return ours


def vectorised_comparison(scene_name: str, args, results: dict) -> None:
    scene = build_scene(scene_name, "decoder", args)
    reference_out = mvp_raymarch(**scene)
    compiled = torch.compile(vectorized.mvp_raymarch)
    vec_out = measure(f"vectorised torch eager ({scene_name})", lambda s: vectorized.mvp_raymarch(**s), scene,
                      args.vector_reps, results, warmup=1)
    diff = (vec_out - reference_out).abs()
    results["triton_vs_vectorised_max_abs_alpha"] = float(diff[..., 3].max())
    results["triton_vs_vectorised_max_abs_rgb"] = float(diff[..., :3].max())
    print(f"triton vs vectorised: max |d alpha| {diff[..., 3].max():.2e}  max |d rgb| {diff[..., :3].max():.2e}")
    try:
        measure(f"vectorised torch.compile ({scene_name})", lambda s: compiled(**s), scene, args.vector_reps,
                results, warmup=1)
    except Exception as error:  # a compile failure is a result worth recording, not a crash
        results["vectorised_compile_error"] = repr(error)[:500]
        print(f"torch.compile of the vectorised path failed: {error!r}"[:500])


def print_ratios(summary: list, other_name: str, results: dict) -> None:
    print(f"\nava / {other_name} (lower is better; target <= 0.5)")
    print(f"{'scene/order':16s} {'fwd ava':>9s} {'fwd orig':>9s} {'ratio':>6s} {'f+b ava':>9s} {'f+b orig':>9s} "
          f"{'ratio':>6s}")
    for key, ours, theirs in summary:
        fwd = ours["forward_ms"] / theirs["forward_ms"]
        both = ours["forward_backward_ms"] / theirs["forward_backward_ms"]
        results[f"{key}_ratio_forward"], results[f"{key}_ratio_forward_backward"] = fwd, both
        print(f"{key:16s} {ours['forward_ms']:9.3f} {theirs['forward_ms']:9.3f} {fwd:6.2f} "
              f"{ours['forward_backward_ms']:9.3f} {theirs['forward_backward_ms']:9.3f} {both:6.2f}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions (median reported)")
    parser.add_argument("--vector-reps", type=int, default=5, help="repetitions for the vectorised path")
    parser.add_argument("--no-vectorised", action="store_true", help="skip the vectorised PyTorch path")
    parser.add_argument("--distance", type=float, default=700.0, help="camera distance of the head scene, mm")
    parser.add_argument("--mesh-distance", type=float, default=1000.0, help="camera distance of the mesh scene, mm")
    parser.add_argument("--scenes", default=None, help="comma-separated: head, mesh (default: head, plus mesh "
                        "with --original)")
    parser.add_argument("--orders", default="decoder,random", help="comma-separated: decoder, random")
    parser.add_argument("--scan-blocks", default="", help="comma-separated SCAN_BLOCK values to compare "
                        f"(default {raymarch_triton.SCAN_BLOCK} only)")
    parser.add_argument("--corners", action="store_true", help="also time the trilinear fetch with all 8 corners at "
                        "once (TRILINEAR_CORNERS_AT_ONCE=True; the default fetches one corner at a time)")
    parser.add_argument("--original", default=None, help="facebookresearch/ava-256 checkout with its raymarcher built")
    parser.add_argument("--against", default=None, help="MODULE:FUNCTION with the original's signature")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--profile", action="store_true", help="print a per-kernel GPU time table")
    args = parser.parse_args(argv)
    args.scan_blocks = [int(value) for value in args.scan_blocks.split(",") if value]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_raymarch needs a CUDA GPU")
    import triton

    scenes = args.scenes.split(",") if args.scenes else (["head", "mesh"] if args.original else ["head"])
    other = original_raymarcher(args.original) if args.original else (load_against(args.against) if args.against else None)
    other_name = "original CUDA" if args.original else args.against
    results: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                     "scan_block": raymarch_triton.SCAN_BLOCK, "corners_at_once": raymarch_triton.corners_at_once()}
    summary = []
    for scene_name in scenes:
        outputs = {order: measure_scene(scene_name, order, args, other, other_name, results, summary)
                   for order in args.orders.split(",")}
        if len(outputs) == 2:
            diff_orders = (outputs["random"] - outputs["decoder"]).abs()
            print(f"[{scene_name}] decoder vs random order: max |d alpha| {diff_orders[..., 3].max():.2e}  "
                  f"max |d rgb| {diff_orders[..., :3].max():.2e}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    if args.profile:
        profile_once(build_scene(scenes[0], "decoder", args))
    if not args.no_vectorised:
        vectorised_comparison(scenes[0], args, results)
    if summary:
        print_ratios(summary, other_name, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
