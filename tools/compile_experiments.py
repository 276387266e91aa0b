"""torch.compile experiments (run on a GPU):

    python tools/compile_experiments.py [--parts a,b,c] [--reps 10] [--json OUT.json]

(a) the raymarcher: the vectorised PyTorch path and the Triton path, eager vs torch.compile
    (default and max-autotune), on a reduced head workload (batch 1, 256x167 rays, 64x64
    primitives) that the vectorised path can handle in reasonable time;
(b) the decoder assembler of the ava256 preset (1024 UV, 128x128 primitives of 8^3), batch 4,
    forward+backward;
(c) the whole ava256 training step (model, losses, backward, optimiser), batch 4 at 512x334.

For each: median step time, peak memory and compile time (first call minus a steady call).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_raymarch import time_call  # noqa: E402
from head_scene import head_scene  # noqa: E402

from ava.kernels import mvp_raymarch, vectorized  # noqa: E402

MODES = ("eager", "default", "max-autotune")


class _Results(dict):
    """A dict that rewrites its JSON file after every entry, so a run cut short keeps its results."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if self.path:
            Path(self.path).write_text(json.dumps(self, indent=2))


def _compiled(fn, mode):
    if mode == "eager":
        return fn
    return torch.compile(fn, mode=None if mode == "default" else mode)


def run_variant(label, make_step, reps, results):
    """make_step() -> a zero-argument callable doing one full step (forward and backward)."""
    torch._dynamo.reset()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step = make_step()
    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    try:
        median_ms = time_call(step, reps, warmup=3)
    except Exception as error:  # record and go on: a failing mode is a result
        results[label] = {"error": repr(error)[:400]}
        print(f"{label:48s} failed: {error!r}"[:300], flush=True)
        return
    peak = torch.cuda.max_memory_allocated() / 2**20
    results[label] = dict(step_ms=median_ms, peak_mb=peak, compile_s=max(first - median_ms / 1000, 0.0))
    print(f"{label:48s} {median_ms:9.2f} ms   peak {peak:9.1f} MiB   compile {results[label]['compile_s']:6.1f} s",
          flush=True)


def part_a(reps, results):
    scene = head_scene(batch=1, height=256, width=167, prims_per_side=64, uv_size=512)
    names = ("primpos", "primrot", "primscale", "template")
    cotangent = torch.randn(*scene["raypos"].shape[:3], 4, device="cuda")
    for backend, fn in (("vectorised", vectorized.mvp_raymarch),
                        ("triton", lambda **k: mvp_raymarch(**k, backend="triton"))):
        for mode in MODES:
            def make_step():
                render = _compiled(fn, mode)
                inputs = {k: (v.detach().clone().requires_grad_(True) if k in names else v) for k, v in scene.items()}

                def step():
                    out = render(**inputs)
                    torch.autograd.backward(out, cotangent)
                return step
            run_variant(f"(a) raymarch {backend} [{mode}]", make_step, reps, results)


def _synthetic_model(batch: int):
    """The ava256 model (80 cameras, 4 identities) on a procedural head topology."""
    from ava.synth.head import directions, make_head_grid, to_topology
    from ava.nn.autoencoder import build_autoencoder
    from ava.nn.config import model_preset

    grid = make_head_grid(128, 96)
    verts = directions(grid.theta, grid.phi) * np.array([75.0, 100.0, 95.0])
    topology = to_topology(grid, verts)
    config = model_preset("ava256")
    model = build_autoencoder(config, topology, vertmean=topology.verts.clone(), vertstd=20.0,
                              num_cameras=80, num_identities=4).cuda()
    return model, topology, config


def part_b(reps, results):
    batch = 4
    model, topology, config = _synthetic_model(batch)
    size = config.uv_size
    verts = torch.randn(batch, topology.num_verts, 3, device="cuda") * 0.1
    texture = torch.randn(batch, 3, size, size, device="cuda") * 0.1
    with torch.no_grad():
        id_cond = model.id_encoder(verts, texture)
    encoding = torch.randn(batch, 16, 4, 4, device="cuda", requires_grad=True)
    viewpos = torch.tensor([[0.0, 0.0, -700.0]], device="cuda").expand(batch, 3).contiguous()
    assembler = model.decoder_assembler
    for mode in MODES:
        def make_step():
            decode = _compiled(assembler, mode)

            def step():
                assembler.zero_grad(set_to_none=True)
                out = decode(id_cond, encoding, viewpos)
                loss = sum(v.float().square().mean() for v in out.values())
                loss.backward()
            return step
        run_variant(f"(b) decoder assembler ava256 b4 [{mode}]", make_step, reps, results)


def _training_batch(topology, batch: int, height: int, width: int, size: int, vertstd: float):
    """A random batch with the shapes and value ranges of a real one (docs/data-layout.md)."""
    from head_scene import look_at_cameras

    from ava.data.dataset import pixel_coordinates

    campos, camrot = look_at_cameras([-30.0, -10.0, 10.0, 30.0][:batch], distance_mm=700.0, device="cuda")
    noise = lambda *shape: torch.randn(*shape, device="cuda")  # noqa: E731
    verts = noise(batch, topology.num_verts, 3) * 0.05
    return {
        "camrot": camrot, "campos": campos,
        "focal": torch.full((batch, 2), 10355.0 / 8.0, device="cuda"),
        "princpt": torch.tensor([[width / 2.0, height / 2.0]], device="cuda").expand(batch, 2).contiguous(),
        "modelmatrix": torch.eye(4, device="cuda").expand(batch, 4, 4).contiguous(),
        "avgtex": noise(batch, 3, size, size) * 0.5, "verts": verts,
        "neut_avgtex": noise(batch, 3, size, size) * 0.5, "neut_verts": verts + noise(*verts.shape) * 0.01,
        "pixelcoords": pixel_coordinates(height, width).cuda().expand(batch, height, width, 2).contiguous(),
        "idindex": torch.arange(batch, device="cuda") % 4, "camindex": torch.arange(batch, device="cuda"),
        "image": torch.rand(batch, 3, height, width, device="cuda") * 255.0,
    }


def make_training_step(mode: str, batch: int = 4, height: int = 512, width: int = 334):
    """One ava256 optimisation step as `ava train` runs it (its own model call, losses, gradient
    sanitising and Adam), with the model compiled in `mode`."""
    from ava.train.config import LossWeights
    from ava.runtime.model import run_model
    from ava.train.losses import LOSS_OUTPUTS, loss_terms, sanitise_gradients, total_loss

    model, topology, config = _synthetic_model(batch)
    network = _compiled(model, mode)
    data = _training_batch(topology, batch, height, width, config.uv_size, vertstd=20.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    vertmean = topology.verts.cuda()
    weights = LossWeights()

    def step():
        output = run_model(network, data, outputs=LOSS_OUTPUTS)
        loss = total_loss(loss_terms(output, data, vertmean, 20.0), weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sanitise_gradients(model.parameters(), 1.0)
        optimizer.step()
    return step


def part_c(reps, results):
    for mode in MODES:
        run_variant(f"(c) train step ava256 b4 [{mode}]", lambda: make_training_step(mode), reps, results)


def main() -> None:
    global MODES
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="a,b,c")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--modes", default=",".join(MODES), help="subset of " + ",".join(MODES))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("compile_experiments needs a CUDA GPU")
    MODES = tuple(m.strip() for m in args.modes.split(","))
    results: dict = _Results(args.json)
    results.update(gpu=torch.cuda.get_device_name(), torch=torch.__version__)
    for part in args.parts.split(","):
        {"a": part_a, "b": part_b, "c": part_c}[part.strip()](args.reps, results)


if __name__ == "__main__":
    main()
