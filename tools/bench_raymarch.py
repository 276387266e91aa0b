"""Benchmark of the MVP raymarcher on the reference workload (see tools/head_scene.py).

    python tools/bench_raymarch.py [--reps 20] [--vector-reps 5] [--no-vectorised]
                                   [--against MODULE:FUNCTION] [--json OUT.json]

Times forward (inputs requiring grad, as in training) and forward+backward (random cotangent)
with CUDA events after warm-up, median over --reps, for the Triton path in decoder order and in
random primitive order; then torch.compile of the vectorised PyTorch path; and, with --against,
any callable with the original's signature f(raypos, raydir, stepsize, tminmax, (primpos,
primrot, primscale), template, warp). Prints agreement with ava's output and peak memory.
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
from head_scene import head_scene  # noqa: E402

from ava.kernels import mvp_raymarch  # noqa: E402
from ava.kernels import vectorized  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions (median reported)")
    parser.add_argument("--vector-reps", type=int, default=5, help="repetitions for the vectorised path")
    parser.add_argument("--no-vectorised", action="store_true", help="skip the vectorised PyTorch path")
    parser.add_argument("--distance", type=float, default=700.0, help="camera distance in mm")
    parser.add_argument("--against", default=None, help="MODULE:FUNCTION with the original's signature")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--profile", action="store_true", help="print a per-kernel GPU time table")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_raymarch needs a CUDA GPU")

    results: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    import triton

    results["triton"] = triton.__version__
    outputs = {}
    for order in ("decoder", "random"):
        scene = head_scene(random_order=order == "random", distance_mm=args.distance)
        alpha_probe = mvp_raymarch(**scene)[..., 3]
        results[f"{order}_coverage"] = float((alpha_probe > 0.01).float().mean())
        results[f"{order}_saturated"] = float((alpha_probe >= 0.999).float().mean())
        print(f"[{order} order] covered {results[f'{order}_coverage']:.3f}  saturated {results[f'{order}_saturated']:.3f}")
        outputs[order] = measure(f"triton ({order} order)", lambda s: mvp_raymarch(**s), scene, args.reps, results)

    scene = head_scene(random_order=False, distance_mm=args.distance)
    if args.profile:
        profile_once(scene)
    reference_out = outputs["decoder"]
    diff_orders = (outputs["random"] - reference_out).abs()
    print(f"decoder vs random order: max |d alpha| {diff_orders[..., 3].max():.2e}  max |d rgb| {diff_orders[..., :3].max():.2e}")

    if not args.no_vectorised:
        compiled = torch.compile(vectorized.mvp_raymarch)
        vec_out = measure(
            "vectorised torch (eager)", lambda s: vectorized.mvp_raymarch(**s), scene, args.vector_reps, results,
            warmup=1,
        )
        diff = (vec_out - reference_out).abs()
        results["triton_vs_vectorised_max_abs_alpha"] = float(diff[..., 3].max())
        results["triton_vs_vectorised_max_abs_rgb"] = float(diff[..., :3].max())
        print(f"triton vs vectorised: max |d alpha| {diff[..., 3].max():.2e}  max |d rgb| {diff[..., :3].max():.2e}")
        try:
            measure("vectorised torch (torch.compile)", lambda s: compiled(**s), scene, args.vector_reps, results,
                    warmup=1)
        except Exception as error:  # a compile failure is a result worth recording, not a crash
            results["vectorised_compile_error"] = repr(error)[:500]
            print(f"torch.compile of the vectorised path failed: {error!r}"[:500])

    if args.against:
        module_name, _, function_name = args.against.partition(":")
        other = getattr(importlib.import_module(module_name), function_name)

        def render_other(s):
            return other(s["raypos"], s["raydir"], s["stepsize"], s["tminmax"],
                         (s["primpos"], s["primrot"], s["primscale"]), s["template"], s["warp"])

        other_out = measure(f"against {args.against}", render_other, scene, args.reps, results)
        diff = (other_out - reference_out).abs()
        results["against_max_abs_diff"] = float(diff.max())
        print(f"{args.against} vs ava: max abs difference {diff.max():.3e}")

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
