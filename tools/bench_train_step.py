"""Times one training step of the ava256 model, ava against the original in the same process.

    python tools/bench_train_step.py [--original PATH] [--states transparent,opaque]
                                     [--variants default,...] [--reps 20] [--json OUT.json]

The workload is `ava train ava256`'s: batch 4, 512x334 pixels, 1024^2 UV maps, 16384 primitives
of 8^3, Adam, the four loss terms, gradient sanitising and clipping. One fixed batch is built
once (cameras 1 m from the head, the original's ÷8 intrinsics, random images and textures, the
mesh near the mean mesh) and reused, so no data loading is timed.

With `--original PATH` (a facebookresearch/ava-256 checkout whose extensions/mvpraymarch and
extensions/utils were built in place for this GPU) the topology and mean mesh are the original's
(assets/face_topology.obj, assets/021924.bin), the original model is built by its own
`utils.get_autoencoder` from a small stand-in dataset object, and its initial weights are loaded
into ava's model (the `ava convert` mapping: the same keys), so both start from the same weights
and see the same batch. The original's step is its training script's: forward, its loss
functions, the per-parameter NaN/inf scrub, clip_grad_norm_, Adam. Without --original a
procedural head topology is used and only ava is timed.

States: `transparent` is the initial weights; `opaque` adds a constant to the opacity bias
(decoder_assembler.geodec.bias) so that the head is opaque, as in a trained model (the coverage and
saturation of the rendered alpha are printed).

Variants (ava only, comma-separated): `default` (what `ava train` does), or `+`-joined changes:
`fusedadam` (torch.optim.Adam(fused=True)); the precision (ava.nn.precision): `fp32` when
neither of `tf32` (TF32 matmuls and convolutions) and `bf16` (autocast the encoders, decoders and
background model; raymarcher and losses fp32) is named, with `cudnn-default` restoring PyTorch's
default TF32 convolutions (what the original runs with);
`chlast` (channels-last weights and activations), `compile` (the decoder assembler compiled),
`compileparts` (encoders, decoder assembler and background model each compiled).

Per variant: the step's median time and its phases (forward+loss, backward, optimiser) with CUDA
events; host wall time per step; the GPU's kernel time per step and kernel count (profiler);
peak memory; a per-module forward split; and the losses of both implementations on the same
batch with the same noise (they must agree).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import types
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

BATCH, HEIGHT, WIDTH, UV = 4, 512, 334, 1024
NUM_CAMERAS, NUM_IDENTITIES = 4, 4
VERTSTD = 5.0
OPAQUE_BIAS = 45.0  # opacity = exp(0.1 * (x + bias)): +45 gives about exp(4.5) = 90, a saturating head
MODULES = ("id_encoder", "expr_encoder", "bottleneck", "decoder_assembler", "raymarcher", "colorcal", "bgmodel")


# --- workload -------------------------------------------------------------------------------------

def load_topology_and_mesh(original: str | None):
    """(Topology, mean mesh [V,3] mm, face direction sign along z)."""
    if original:
        from ava.nn.uvmap import load_obj

        assets = Path(original).expanduser() / "assets"
        topology = load_obj(assets / "face_topology.obj")
        mesh = torch.from_numpy(np.fromfile(assets / "021924.bin", dtype=np.float32).reshape(-1, 3).copy())
        return topology, mesh, 1.0
    from ava.synth.head import directions, make_head_grid, to_topology

    grid = make_head_grid(128, 96)
    verts = directions(grid.theta, grid.phi) * np.array([75.0, 100.0, 95.0])
    topology = to_topology(grid, verts)
    return topology, topology.verts.clone().float(), -1.0


def make_batch(topology, mesh: torch.Tensor, facing: float, seed: int = 0) -> dict:
    """One training batch (shapes and value ranges of a real one), on the GPU."""
    from head_scene import YAWS, look_at_cameras

    from ava.data.dataset import pixel_coordinates

    generator = torch.Generator().manual_seed(seed)

    def noise(*shape):
        return torch.randn(*shape, generator=generator)

    campos, camrot = look_at_cameras(YAWS[:BATCH], distance_mm=1000.0, facing=facing)
    verts = noise(BATCH, topology.num_verts, 3) * 0.05
    batch = {
        "camrot": camrot, "campos": campos,
        "focal": torch.full((BATCH, 2), 10355.0 / 8.0),
        "princpt": torch.tensor([[WIDTH / 2.0, HEIGHT / 2.0]]).expand(BATCH, 2).contiguous(),
        "modelmatrix": torch.eye(4).expand(BATCH, 4, 4).contiguous(),
        "avgtex": noise(BATCH, 3, UV, UV) * 0.5, "verts": verts,
        "neut_avgtex": noise(BATCH, 3, UV, UV) * 0.5, "neut_verts": verts + noise(*verts.shape) * 0.01,
        "pixelcoords": pixel_coordinates(HEIGHT, WIDTH).expand(BATCH, HEIGHT, WIDTH, 2).contiguous(),
        "idindex": torch.arange(BATCH) % NUM_IDENTITIES, "camindex": torch.arange(BATCH) % NUM_CAMERAS,
        "image": torch.rand(BATCH, 3, HEIGHT, WIDTH, generator=generator) * 255.0,
    }
    return {key: value.cuda() for key, value in batch.items()}


def model_arguments(batch: dict) -> tuple:
    """The autoencoder's positional arguments as the original's training script passes them."""
    return (batch["camrot"], batch["campos"], batch["focal"], batch["princpt"], batch["modelmatrix"],
            batch["avgtex"], batch["verts"], batch["neut_avgtex"], batch["neut_verts"], batch["neut_avgtex"],
            batch["neut_verts"], batch["pixelcoords"], batch["idindex"], batch["camindex"])


# --- the original ---------------------------------------------------------------------------------

class _StandInDataset:
    """What the original's get_autoencoder reads from its dataset object."""

    def __init__(self, mesh: torch.Tensor) -> None:
        self.identities = [f"id{index}" for index in range(NUM_IDENTITIES)]
        self.vertmean = mesh.numpy().astype(np.float32)
        self.vertstd = VERTSTD
        self._cameras = [str(400000 + index) for index in range(NUM_CAMERAS)]

    def get_allcameras(self):
        return list(self._cameras)


def import_original(path: str):
    from original_checkout import OriginalCheckout

    checkout = OriginalCheckout(path)  # exits with a message when it is not one, or lacks built extensions
    checkout.require_extensions()
    checkout.on_path()
    # Its utils module imports mesh libraries that only its closest-point helper uses; model
    # construction does not need them, so empty stand-ins are enough when they are not installed.
    for name in ("igl", "trimesh", "trimesh.triangles"):
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.point_mesh_squared_distance = stub.Trimesh = stub.points_to_barycentric = None
            sys.modules[name] = stub
    import losses as original_losses
    import utils as original_utils
    from models.bottlenecks.vae import kl_loss_stable

    return original_utils, original_losses, kl_loss_stable


def build_original(path: str, mesh: torch.Tensor):
    original_utils, original_losses, kl_loss_stable = import_original(path)
    with contextlib.redirect_stdout(sys.stderr):
        model = original_utils.get_autoencoder(_StandInDataset(mesh), str(Path(path).expanduser() / "assets"))
    return model.cuda().train(), original_losses, kl_loss_stable


def original_step_fn(model, batch, weights, clip, vertmean, mean_ell_1, kl_loss_stable, optimizer):
    """The original training script's step (steady state, after its 100 warm-up iterations)."""

    def forward_loss():
        output = model(*model_arguments(batch), running_avg_scale=False, gt_geo=None, residuals_weight=1.0,
                       output_set={"irgbrec", "verts", "primscale", "expr_mu", "expr_logstd"})
        terms = {
            "irgbl1": mean_ell_1(output["irgbrec"], batch["image"]),
            "vertl1": mean_ell_1(output["verts"], batch["verts"] * VERTSTD + vertmean),
            "primvolsum": torch.sum(torch.prod(1.0 / output["primscale"], dim=-1), dim=-1),
            "kldiv": kl_loss_stable(output["expr_mu"], output["expr_logstd"]),
        }
        loss = sum(weights[name] * torch.mean(value) for name, value in terms.items())
        return loss, {name: torch.mean(value) for name, value in terms.items()}

    def update():
        for parameter in (p for group in optimizer.param_groups for p in group["params"]):
            if parameter.grad is not None:
                parameter.grad.data[torch.isnan(parameter.grad.data)] = 0
                parameter.grad.data[torch.isinf(parameter.grad.data)] = 0
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()

    return forward_loss, update


# --- ava ------------------------------------------------------------------------------------------

def build_ava(topology, mesh: torch.Tensor, state: dict | None):
    from ava.nn.autoencoder import build_autoencoder
    from ava.nn.config import model_preset

    model = build_autoencoder(model_preset("ava256"), topology, vertmean=mesh, vertstd=VERTSTD,
                              num_cameras=NUM_CAMERAS, num_identities=NUM_IDENTITIES)
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            sys.exit(f"the original's state dict does not map onto ava's model: missing {missing[:5]}, "
                     f"unexpected {unexpected[:5]}")
    return model.cuda().train()


def apply_variant(model, variant: set[str]):
    """Applies the `+`-joined changes of a variant (see the module docstring) to a fresh model."""
    from ava.nn.precision import configure_tensor_cores

    precision = "bf16" if "bf16" in variant else ("tf32" if "tf32" in variant else "fp32")
    configure_tensor_cores(precision)
    if "cudnn-default" in variant:  # PyTorch's own default, which the original runs with
        torch.backends.cudnn.allow_tf32 = True
    model.set_precision(precision)
    if "chlast" in variant:
        model.to(memory_format=torch.channels_last)
    if "compile" in variant:
        model.decoder_assembler.compile()
    if "compileparts" in variant:
        # Each submodule compiled on its own (the raymarcher, a custom op with data-dependent
        # sizes, stays outside), so Inductor can fuse the weight-norm, activation and skip ops.
        for name in ("id_encoder", "expr_encoder", "decoder_assembler", "bgmodel"):
            getattr(model, name).compile()
    return model


def ava_step_fn(model, batch, weights, clip, vertmean):
    from ava.runtime.model import run_model
    from ava.train.losses import LOSS_OUTPUTS, loss_terms, sanitise_gradients, total_loss

    def forward_loss():
        output = run_model(model, batch, outputs=LOSS_OUTPUTS)
        terms = loss_terms(output, batch, vertmean, VERTSTD)
        return total_loss(terms, weights), terms

    return forward_loss, (lambda optimizer: sanitise_gradients(model.parameters(), clip))


# --- timing ---------------------------------------------------------------------------------------

def time_step(forward_loss, sanitise, optimizer, reps: int, warmup: int = 5) -> dict:
    def one(events=None):
        if events:
            events[0].record()
        loss, _ = forward_loss()
        if events:
            events[1].record()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if events:
            events[2].record()
        sanitise()
        if events:
            events[3].record()

    for _ in range(warmup):
        one()
    torch.cuda.synchronize()
    phases = defaultdict(list)
    for _ in range(reps):
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        started = time.perf_counter()
        one(events)
        torch.cuda.synchronize()
        phases["host_ms"].append((time.perf_counter() - started) * 1000)
        phases["forward_loss_ms"].append(events[0].elapsed_time(events[1]))
        phases["backward_ms"].append(events[1].elapsed_time(events[2]))
        phases["optimizer_ms"].append(events[2].elapsed_time(events[3]))
        phases["step_ms"].append(events[0].elapsed_time(events[3]))
    result = {name: statistics.median(values) for name, values in phases.items()}
    torch.cuda.reset_peak_memory_stats()
    one()
    torch.cuda.synchronize()
    result["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    result.update(kernel_profile(one))
    return result


def kernel_profile(one, steps: int = 3) -> dict:
    """GPU kernel time and launches per step, and the costliest kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            one()
        torch.cuda.synchronize()
    total, count = 0.0, 0
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            elapsed = event.time_range.elapsed_us() / 1000
            total += elapsed
            count += 1
            by_name[event.name[:70]][0] += elapsed
            by_name[event.name[:70]][1] += 1
    top = sorted(by_name.items(), key=lambda item: -item[1][0])[:25]
    return {"kernel_ms": total / steps, "kernels": count / steps,
            "top_kernels": [(name, ms / steps, calls / steps) for name, (ms, calls) in top]}


def module_split(model, forward_loss, reps: int = 5) -> dict[str, float]:
    """Forward GPU time of each top-level submodule (CUDA events around its forward)."""
    marks: dict[str, list] = defaultdict(list)
    handles = []
    for name in MODULES:
        module = getattr(model, name, None)
        if module is None:
            continue

        def before(_module, _inputs, name=name):
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            marks[name].append([event, None])

        def after(_module, _inputs, _output, name=name):
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            marks[name][-1][1] = event

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    with torch.no_grad():
        for _ in range(reps):
            forward_loss()
    torch.cuda.synchronize()
    for handle in handles:
        handle.remove()
    return {name: statistics.median(a.elapsed_time(b) for a, b in pairs) for name, pairs in marks.items()}


def render_coverage(model, batch) -> tuple[float, float]:
    from ava.runtime.model import run_model

    with torch.no_grad():
        alpha = run_model(model, batch, outputs=("ialpha",))["ialpha"]
    return float((alpha > 0.01).float().mean()), float((alpha >= 0.999).float().mean())


# --- main -----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", default=None, help="facebookresearch/ava-256 checkout with built extensions")
    parser.add_argument("--states", default="transparent,opaque")
    parser.add_argument("--variants", default="default", help="comma-separated; each '+'-joined changes")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json", default=None)
    parser.add_argument("--top", type=int, default=12, help="kernels listed per variant")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_train_step needs a CUDA GPU")
    from ava.train.config import LossWeights

    weights_config = LossWeights()
    weights = {name: float(getattr(weights_config, name)) for name in ("irgbl1", "vertl1", "kldiv", "primvolsum")}
    clip = 1.0
    topology, mesh, facing = load_topology_and_mesh(args.original)
    batch = make_batch(topology, mesh, facing)
    vertmean = mesh.cuda()
    results: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "weights": weights,
                     "cudnn_tf32_default": torch.backends.cudnn.allow_tf32}
    cudnn_default = torch.backends.cudnn.allow_tf32
    original_initial = None
    if args.original:
        original_model, original_losses, kl_loss_stable = build_original(args.original, mesh)
        original_initial = {key: value.detach().clone() for key, value in original_model.state_dict().items()}
        # The original leaves the primitive scales (adaptwarps) at 0 until its 100 warm-up steps
        # estimate them from the tracked meshes; a steady-state step needs them set. Both models
        # get ava's estimate from the mean mesh (what the warm-up converges to on this batch).
        reference = build_ava(topology, mesh, None)
        original_initial["decoder_assembler.adaptwarps"] = reference.decoder_assembler.adaptwarps.detach().clone()
        del reference

    table = []
    for state_name in args.states.split(","):
        state = None
        if original_initial is not None:
            state = {key: value.clone() for key, value in original_initial.items()}
        elif state_name == "opaque" or state_name == "transparent":
            state = None
        for variant_name in args.variants.split(","):
            torch.backends.cudnn.allow_tf32 = cudnn_default
            variant = set(variant_name.split("+")) - {"default"}
            model = build_ava(topology, mesh, state)
            if state_name == "opaque":
                with torch.no_grad():
                    model.decoder_assembler.geodec.bias += OPAQUE_BIAS
            coverage = render_coverage(model, batch)
            model = apply_variant(model, variant)
            fused = "fusedadam" in variant
            optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)
            forward_loss, sanitise = ava_step_fn(model, batch, weights_config, clip, vertmean)
            torch.manual_seed(0)
            _, terms = forward_loss()
            label = f"ava [{variant_name}] {state_name}"
            result = time_step(forward_loss, lambda: (sanitise(optimizer), optimizer.step()), optimizer, args.reps)
            # Hooks inside compiled modules would be traced; the split is for eager variants.
            result["modules_forward_ms"] = {} if "compile" in variant_name else module_split(model, forward_loss)
            result["coverage"], result["saturated"] = coverage
            result["loss_terms"] = {name: float(value) for name, value in terms.items()}
            results[label] = result
            table.append((label, result))
            _print_result(label, result, args.top)
            del model, optimizer
            torch.cuda.empty_cache()

        if args.original:
            torch.backends.cudnn.allow_tf32 = cudnn_default
            torch.backends.cuda.matmul.allow_tf32 = False
            original_model.load_state_dict(original_initial)
            if state_name == "opaque":
                with torch.no_grad():
                    original_model.decoder_assembler.geodec.bias += OPAQUE_BIAS
            optimizer = torch.optim.Adam(original_model.parameters(), lr=2e-4, betas=(0.9, 0.999))
            forward_loss, update = original_step_fn(original_model, batch, weights, clip, vertmean,
                                                    original_losses.mean_ell_1, kl_loss_stable, optimizer)
            torch.manual_seed(0)
            _, terms = forward_loss()
            label = f"original {state_name}"
            result = time_step(forward_loss, update, optimizer, args.reps)
            result["modules_forward_ms"] = module_split(original_model, forward_loss)
            result["loss_terms"] = {name: float(value) for name, value in terms.items()}
            results[label] = result
            table.append((label, result))
            _print_result(label, result, args.top)
            del optimizer
            torch.cuda.empty_cache()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))

    print("\nsummary (median ms per step; busy = GPU kernel time / step time)")
    print(f"{'run':44s} {'step':>8s} {'fwd+loss':>8s} {'bwd':>8s} {'optim':>7s} {'host':>8s} {'kernels':>8s} "
          f"{'busy':>5s} {'launch':>6s} {'peakGB':>6s} {'loss':>9s}")
    for label, result in table:
        loss = sum(weights[name] * value for name, value in result["loss_terms"].items())
        print(f"{label:44s} {result['step_ms']:8.2f} {result['forward_loss_ms']:8.2f} {result['backward_ms']:8.2f} "
              f"{result['optimizer_ms']:7.2f} {result['host_ms']:8.2f} {result['kernel_ms']:8.2f} "
              f"{result['kernel_ms'] / result['step_ms']:5.0%} {result['kernels']:6.0f} {result['peak_gb']:6.2f} "
              f"{loss:9.4f}")
    if args.original:
        for state_name in args.states.split(","):
            theirs = results.get(f"original {state_name}")
            for label, result in table:
                if label.startswith("ava") and label.endswith(state_name) and theirs:
                    print(f"{label:44s} / original: {result['step_ms'] / theirs['step_ms']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def _print_result(label: str, result: dict, top: int) -> None:
    print(f"\n== {label}: step {result['step_ms']:.2f} ms (fwd+loss {result['forward_loss_ms']:.2f}, bwd "
          f"{result['backward_ms']:.2f}, optim {result['optimizer_ms']:.2f}), host {result['host_ms']:.2f} ms, "
          f"kernels {result['kernel_ms']:.2f} ms in {result['kernels']:.0f} launches, peak {result['peak_gb']:.2f} GB",
          flush=True)
    if "coverage" in result:
        print(f"   alpha: covered {result['coverage']:.3f}, saturated {result['saturated']:.3f}")
    print("   forward by module (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in result["modules_forward_ms"].items()))
    print("   losses: " + ", ".join(f"{k} {v:.6g}" for k, v in result["loss_terms"].items()))
    for name, ms, calls in result["top_kernels"][:top]:
        print(f"   {ms:8.3f} ms {calls:6.0f}x  {name}")


if __name__ == "__main__":
    main()
