"""ava.train.ddp's graph probe and plan, and the automatic loader worker count (no process group:
the torchrun runs are in test_train_distributed.py)."""

from __future__ import annotations

import pytest
import torch

from ava.runtime.model import run_model
from ava.train.config import LossWeights
from ava.train.data import MAX_AUTO_WORKERS, default_num_workers
from ava.train.ddp import plan_ddp, probe_graph
from ava.train.losses import LOSS_OUTPUTS, loss_terms, total_loss
from test_nn_helpers import SMALL, batch, small_model


@pytest.fixture(scope="module")
def scene():
    model, topology, vertmean = small_model()
    inputs = batch(topology, SMALL.uv_size, count=2)
    inputs["image"] = torch.rand(2, 3, *inputs["pixelcoords"].shape[1:3]) * 255
    return model, inputs, vertmean


def loss_function(model, inputs, vertmean, weights=LossWeights()):
    def loss_of(warm: bool) -> torch.Tensor:
        output = run_model(model, inputs, warm=warm, outputs=LOSS_OUTPUTS)
        return total_loss(loss_terms(output, inputs, vertmean, 2.0), weights)

    return loss_of


def finest_skip_level(levels: int) -> set[str]:
    """The identity encoder's parameters that make the UV-size skip, which no decoder layer reads."""
    names = {f"id_encoder.{branch}.layers.b0.0.{part}" for branch in ("tex", "geo") for part in ("weight", "bias", "g")}
    names |= {f"id_encoder.comb.layers.{block}{levels - 1}.0.{part}"
              for block in ("t2g", "g2t", "g", "t") for part in ("weight", "bias", "g")}
    return names


def test_probe_finds_what_backward_leaves_without_gradient_and_changes_nothing(scene):
    model, inputs, vertmean = scene
    loss_of = loss_function(model, inputs, vertmean)
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    rng = torch.get_rng_state()
    probe = probe_graph(model, loss_of, [True, False], torch.device("cpu"))
    assert probe.unused[True] == probe.unused[False] == finest_skip_level(SMALL.levels)
    assert probe.written_buffers == {"decoder_assembler.adaptwarps"}
    assert torch.equal(torch.get_rng_state(), rng)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    for warm in (True, False):  # the probe agrees with a real backward
        model.zero_grad(set_to_none=True)
        loss_of(warm).backward()
        assert {name for name, parameter in model.named_parameters() if parameter.grad is None} == probe.unused[warm]
    model.zero_grad(set_to_none=True)


def test_plan_freezes_the_fixed_unused_set_and_falls_back_when_a_phase_differs(scene):
    model, inputs, vertmean = scene
    plan = plan_ddp(probe_graph(model, loss_function(model, inputs, vertmean), [True, False], torch.device("cpu")),
                    bucket_mb=50)
    assert plan.frozen == sorted(finest_skip_level(SMALL.levels)) and plan.varying == []
    assert not plan.find_unused_parameters and plan.bucket_mb == 50
    assert "no search for unused ones" in plan.describe(model)
    # Without the mesh loss, the mesh head gets a gradient only once it guides the primitives.
    no_mesh_loss = loss_function(model, inputs, vertmean, LossWeights(vertl1=0.0))
    plan = plan_ddp(probe_graph(model, no_mesh_loss, [True, False], torch.device("cpu")), bucket_mb=25)
    assert plan.varying and all(name.startswith("decoder_assembler.geodec.geo.") for name in plan.varying)
    assert plan.find_unused_parameters and set(plan.frozen) == finest_skip_level(SMALL.levels)
    # A run that starts after the warm-up (a resume) only goes through one phase: nothing varies.
    plan = plan_ddp(probe_graph(model, no_mesh_loss, [False], torch.device("cpu")), bucket_mb=25)
    assert not plan.find_unused_parameters


@pytest.mark.parametrize("cpus, local_world_size, expected", [
    (16, 1, MAX_AUTO_WORKERS), (16, 2, 7), (128, 8, MAX_AUTO_WORKERS), (64, 8, 7), (2, 1, 1), (4, 8, 0), (1, 1, 0)])
def test_automatic_worker_count_shares_the_cores_of_a_node(cpus, local_world_size, expected):
    assert default_num_workers(local_world_size, cpus) == expected


def test_automatic_worker_count_reads_this_machine():
    assert 0 <= default_num_workers(1) <= MAX_AUTO_WORKERS
