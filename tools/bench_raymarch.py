"""Benchmark of the MVP raymarcher on the reference workload (see tools/head_scene.py).

    python tools/bench_raymarch.py [--original PATH] [--scenes head,mesh] [--reps 20]
                                   [--vector-reps 5] [--no-vectorised]
                                   [--against MODULE:FUNCTION] [--json OUT.json]

Times forward (inputs requiring grad, as in training) and forward+backward (random cotangent)
with CUDA events after warm-up, median over --reps, for the Triton path in decoder order and in
random primitive order, on each scene: `head` (the synthetic head of head_scene.py, cameras
0.7 m away) and `mesh` (the original repository's registered mesh assets/021924.bin on
assets/face_topology.obj, cameras 1 m away; needs --original). Then torch.compile of the
vectorised PyTorch path; and the original CUDA raymarcher in the same run, on the same inputs:
`--original PATH` is a checkout of facebookresearch/ava-256 whose extensions/mvpraymarch was
built in place (for Hopper: its own setup.py with the arch set to sm_90), or `--against` names
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions (median reported)")
    parser.add_argument("--vector-reps", type=int, default=5, help="repetitions for the vectorised path")
    parser.add_argument("--no-vectorised", action="store_true", help="skip the vectorised PyTorch path")
    parser.add_argument("--distance", type=float, default=700.0, help="camera distance of the head scene, mm")
    parser.add_argument("--mesh-distance", type=float, default=1000.0, help="camera distance of the mesh scene, mm")
    parser.add_argument("--scenes", default=None, help="comma-separated: head, mesh (default: head, plus mesh "
                        "with --original)")
    parser.add_argument("--original", default=None, help="facebookresearch/ava-256 checkout with its raymarcher built")
    parser.add_argument("--against", default=None, help="MODULE:FUNCTION with the original's signature")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--profile", action="store_true", help="print a per-kernel GPU time table")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_raymarch needs a CUDA GPU")
    scenes = args.scenes.split(",") if args.scenes else (["head", "mesh"] if args.original else ["head"])
    other = original_raymarcher(args.original) if args.original else (load_against(args.against) if args.against else None)
    other_name = "original CUDA" if args.original else args.against

    results: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    import triton

    results["triton"] = triton.__version__

    def render_other(s):
        return other(s["raypos"], s["raydir"], s["stepsize"], s["tminmax"],
                     (s["primpos"], s["primrot"], s["primscale"]), s["template"], s["warp"])

    summary = []
    for scene_name in scenes:
        outputs = {}
        for order in ("decoder", "random"):
            key = f"{scene_name}/{order}"
            scene = build_scene(scene_name, order, args)
            alpha_probe = mvp_raymarch(**scene)[..., 3]
            results[f"{key}_coverage"] = float((alpha_probe > 0.01).float().mean())
            results[f"{key}_saturated"] = float((alpha_probe >= 0.999).float().mean())
            print(f"[{key}] covered {results[f'{key}_coverage']:.3f}  saturated {results[f'{key}_saturated']:.3f}")
            outputs[order] = measure(f"ava triton ({key})", lambda s: mvp_raymarch(**s), scene, args.reps, results)
            if other is not None:
                other_out = measure(f"{other_name} ({key})", render_other, scene, args.reps, results)
                diff = (other_out - outputs[order]).abs()
                results[f"{key}_against_max_abs_alpha"] = float(diff[..., 3].max())
                results[f"{key}_against_max_abs_rgb"] = float(diff[..., :3].max())
                results[f"{key}_against_mean_abs_rgb"] = float(diff[..., :3].mean())
                print(f"{other_name} vs ava ({key}): max |d alpha| {diff[..., 3].max():.2e}  "
                      f"max |d rgb| {diff[..., :3].max():.2e}  mean |d rgb| {diff[..., :3].mean():.2e}")
                ours, theirs = results[f"ava triton ({key})"], results[f"{other_name} ({key})"]
                summary.append((key, ours, theirs))
            del scene
        diff_orders = (outputs["random"] - outputs["decoder"]).abs()
        print(f"[{scene_name}] decoder vs random order: max |d alpha| {diff_orders[..., 3].max():.2e}  "
              f"max |d rgb| {diff_orders[..., :3].max():.2e}")

    scene = build_scene(scenes[0], "decoder", args)
    if args.profile:
        profile_once(scene)
    reference_out = mvp_raymarch(**scene)
    if not args.no_vectorised:
        compiled = torch.compile(vectorized.mvp_raymarch)
        vec_out = measure(
            f"vectorised torch eager ({scenes[0]})", lambda s: vectorized.mvp_raymarch(**s), scene, args.vector_reps,
            results, warmup=1,
        )
        diff = (vec_out - reference_out).abs()
        results["triton_vs_vectorised_max_abs_alpha"] = float(diff[..., 3].max())
        results["triton_vs_vectorised_max_abs_rgb"] = float(diff[..., :3].max())
        print(f"triton vs vectorised: max |d alpha| {diff[..., 3].max():.2e}  max |d rgb| {diff[..., :3].max():.2e}")
        try:
            measure(f"vectorised torch.compile ({scenes[0]})", lambda s: compiled(**s), scene, args.vector_reps,
                    results, warmup=1)
        except Exception as error:  # a compile failure is a result worth recording, not a crash
            results["vectorised_compile_error"] = repr(error)[:500]
            print(f"torch.compile of the vectorised path failed: {error!r}"[:500])

    if summary:
        print(f"\nava / {other_name} (lower is better; target <= 0.5)")
        print(f"{'scene/order':16s} {'fwd ava':>9s} {'fwd orig':>9s} {'ratio':>6s} {'f+b ava':>9s} {'f+b orig':>9s} {'ratio':>6s}")
        for key, ours, theirs in summary:
            fwd = ours["forward_ms"] / theirs["forward_ms"]
            both = ours["forward_backward_ms"] / theirs["forward_backward_ms"]
            results[f"{key}_ratio_forward"], results[f"{key}_ratio_forward_backward"] = fwd, both
            print(f"{key:16s} {ours['forward_ms']:9.3f} {theirs['forward_ms']:9.3f} {fwd:6.2f} "
                  f"{ours['forward_backward_ms']:9.3f} {theirs['forward_backward_ms']:9.3f} {both:6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
