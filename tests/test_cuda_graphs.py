"""CUDA graphs: the captured training step, the viewer's captured render and the one-launch
gradient scrub inside a capture, each against its eager form. They need a GPU (the CPU runs the
same code eagerly in test_train_step.py, test_train.py and test_view.py); tools/gpu_speed_suite.py
runs them there."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))


def test_the_scrub_inside_a_graph_cleans_each_replays_gradients():
    from ava.kernels.nonfinite import ZeroNonfinite

    tensors = [torch.zeros(5000, device="cuda"), torch.zeros(3, 7, device="cuda")]
    scrub = ZeroNonfinite()
    scrub(tensors)  # eager once (lazy initialisation outside the capture)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        scrub(tensors)
    scrub.finish_capture()
    for value in (float("nan"), float("inf")):
        for tensor in tensors:
            tensor.fill_(2.0)
            tensor.view(-1)[::3] = value
        graph.replay()
        torch.cuda.synchronize()
        for tensor in tensors:
            expected = torch.full_like(tensor, 2.0)
            expected.view(-1)[::3] = 0.0
            assert torch.equal(tensor, expected)


def _tiny_training(seed: int = 0):
    from bench_train_step import Workload, build_ava, make_batch, model_config  # noqa: F401

    from ava.synth.head import directions, make_head_grid, to_topology
    from ava.train.config import LossWeights

    import numpy as np

    grid = make_head_grid(32, 24)
    verts = directions(grid.theta, grid.phi) * np.array([75.0, 100.0, 95.0])
    topology = to_topology(grid, verts)
    mesh = topology.verts.clone().float()
    batches = [make_batch(topology, -1.0, "tiny", model_config("tiny").uv_size, index, pin=True) for index in range(3)]
    work = Workload(size="tiny", device=torch.device("cuda"), topology=topology, mesh=mesh, facing=-1.0,
                    batches=batches, vertmean=mesh.cuda(), weights=LossWeights())
    torch.manual_seed(seed)
    model = build_ava(work, None)
    with torch.no_grad():
        model.decoder_assembler.geodec.bias += 45.0  # an opaque head: rays saturate, the backward has work
    return work, model


def _train(work, model, start, mode: str, steps: int):
    from bench_train_step import ava_runner, make_adam

    with torch.no_grad():
        for key, value in model.state_dict().items():
            value.copy_(start[key])
    runner = ava_runner(model, make_adam(model, fused=True), work, mode)
    torch.manual_seed(7)
    values = torch.stack([runner.step(work.batches[index % 3], warm=False).values.clone() for index in range(steps)])
    return values.double().cpu(), torch.cat([parameter.detach().reshape(-1).clone() for parameter in model.parameters()])


def test_the_captured_training_step_trains_like_its_eager_form():
    """12 steps (3 eager, the capture, 9 replays) against 12 sync-free eager steps from the same
    state and noise: the same losses and weights, within twice the spread of two eager runs (the
    raymarcher's backward adds with atomics, in an order that varies from run to run) plus 1e-4."""
    work, model = _tiny_training()
    start = {key: value.detach().clone() for key, value in model.state_dict().items()}
    eager_a = _train(work, model, start, "sync-free", 12)
    eager_b = _train(work, model, start, "sync-free", 12)
    graph = _train(work, model, start, "graph", 12)

    def spread(first, second):
        loss = float(((first[0][:, 0] - second[0][:, 0]).abs() / second[0][:, 0].abs()).max())
        weights = float((first[1] - second[1]).norm() / second[1].norm())
        return loss, weights

    floor = spread(eager_a, eager_b)
    got = spread(graph, eager_a)
    assert eager_a[0][:, 0].std() > 0  # the losses move: the steps do train
    # A replay that read a stale batch, rate or gradient would be off by 1e-3 or more; 1e-4 leaves
    # room for atomics that happen to add in one order in both eager runs and in another here.
    assert got[0] <= 2 * floor[0] + 1e-4 and got[1] <= 2 * floor[1] + 1e-4, (got, floor)


def test_the_captured_view_render_is_the_eager_render():
    from bench_view import orbit, synthetic_avatar

    from ava.view.avatar import render_view
    from ava.view.frames import ViewRenderer, to_uint8_chw

    device = torch.device("cuda")
    model, id_cond, encoding, centre, direction, up, idindex, camindex = synthetic_avatar(device, "tiny")
    other_id = {key: [value * 0.5 for value in values] if isinstance(values, list) else values * 0.5
                for key, values in id_cond.items()}
    renderer = ViewRenderer(model, device)
    cameras = orbit(centre, direction, up, 700.0, 6, 40, 26)
    with torch.no_grad():
        for index, camera in enumerate(cameras):  # the first is eager, the second captures, then replays
            identity = id_cond if index % 2 == 0 else other_id
            frame = renderer.render(camera, identity, encoding, idindex, camindex, (10.0, 20.0, 30.0))
            expected = to_uint8_chw(render_view(model, camera, identity, encoding, idindex, camindex,
                                                (10.0, 20.0, 30.0)))
            # The same kernels; a convolution algorithm chosen differently inside the capture could
            # move a rounding, so one level of 255 is allowed.
            assert (frame.int() - expected.int()).abs().max() <= 1, index
    assert (40, 26) in renderer._graphs
