"""The pieces of the training loop on their own: one optimiser step (with a caller's loss, as
another training would use it), the learning-rate schedule and the periodic cadence."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ava.train.config import TrainSection
from ava.train.periodic import due
from ava.train.schedule import advance, learning_rate, make_scheduler
from ava.train.step import train_step


class _Weights:
    fit = 1.0
    ignored = 0.0


def _line_terms(network, batch):
    prediction = network(batch["x"])
    return {"prediction": prediction}, {"fit": ((prediction - batch["y"]) ** 2).mean(),
                                        "ignored": prediction.abs().mean() * float("nan")}


def test_a_step_updates_the_parameters_and_reports_the_terms():
    torch.manual_seed(0)
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    batch = {"x": torch.randn(16, 2), "y": torch.randn(16, 1)}
    before = [parameter.detach().clone() for parameter in network.parameters()]
    with torch.no_grad():
        expected_loss = ((network(batch["x"]) - batch["y"]) ** 2).mean()
    result = train_step(network, optimizer, batch, _line_terms, _Weights(), clip=1e6)
    # A weight of 0 drops a term (here a NaN one) from the total; the term is still reported.
    assert float(result.loss) == pytest.approx(float(expected_loss), rel=1e-6)
    assert set(result.terms) == {"fit", "ignored"} and not result.loss.requires_grad
    assert all(not value.requires_grad for value in result.terms.values())
    assert result.output["prediction"].shape == (16, 1)
    after = [parameter.detach() for parameter in network.parameters()]
    moved = [float((new - old).abs().max()) for new, old in zip(after, before)]
    assert all(change > 0 for change in moved)
    # SGD moved each parameter by exactly lr x gradient (the norm is far below the clip).
    manual = torch.nn.Linear(2, 1)
    manual.load_state_dict({"weight": before[0], "bias": before[1]})
    ((manual(batch["x"]) - batch["y"]) ** 2).mean().backward()
    torch.testing.assert_close(after[0], before[0] - 0.1 * manual.weight.grad)
    torch.testing.assert_close(result.grad_norm, torch.linalg.vector_norm(
        torch.stack([manual.weight.grad.norm(), manual.bias.grad.norm()])))


def test_a_step_clips_the_gradient_norm():
    network = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        network.weight.fill_(0.0)
    optimizer = torch.optim.SGD(network.parameters(), lr=1.0)
    batch = {"x": torch.ones(4, 1), "y": torch.full((4, 1), 100.0)}
    result = train_step(network, optimizer, batch, _line_terms, _Weights(), clip=0.5)
    assert float(result.grad_norm) == pytest.approx(200.0)  # d/dw mean((w - 100)^2) at w = 0
    assert float(network.weight.detach()) == pytest.approx(0.5, rel=1e-5)  # the step is the clipped gradient


@given(gamma=st.sampled_from([0.3, 1.4]), every=st.integers(1, 5), changes=st.integers(0, 3))
def test_learning_rate_is_what_the_stepped_scheduler_gives(gamma, every, changes):
    train = TrainSection(init_learning_rate=1e-3, gamma=gamma, lr_scheduler_iter=every, lr_scheduler_changes=changes)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=train.init_learning_rate)
    scheduler = make_scheduler(optimizer, train)
    for index in range(4 * every * (changes + 1)):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate(train, index), rel=1e-9), index
        optimizer.step()
        advance(scheduler, index + 1, train)
    assert learning_rate(train, 10**9) == pytest.approx(1e-3 * gamma**changes)


def test_periodic_actions_run_every_n_steps_and_at_the_end():
    assert [step for step in range(1, 11) if due(step, 4, final=step == 10)] == [4, 8, 10]


# --- the step without host reads (what a CUDA graph captures) ---------------------------------

def _conv_terms(network, batch):
    """A small convolutional regression whose loss sometimes has NaN gradients (batch["poison"])."""
    prediction = network(batch["x"])
    fit = ((prediction - batch["y"]) ** 2).mean()
    # A term whose gradient is NaN in one entry when poisoned (sqrt at 0): the scrub must zero it.
    poison = torch.sqrt(network[0].weight.flatten()[:1].abs() * 0.0 + batch["poison"]).sum()
    return {"prediction": prediction}, {"fit": fit, "poison": poison}


class _ConvWeights:
    fit = 1.0
    poison = 1e-3


def _conv_problem(seed: int = 0):
    torch.manual_seed(seed)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3))
    generator = torch.Generator().manual_seed(seed + 1)
    batches = [{"x": torch.randn(4, 3, 9, 9, generator=generator), "y": torch.randn(4, 2, 7, 7, generator=generator) * 30,
                "poison": torch.tensor(0.0 if step in (3, 7) else 1.0)} for step in range(12)]
    return network, batches


@pytest.mark.parametrize("clip", [1.0, 1e6])
def test_sync_free_step_equals_the_eager_step_bit_for_bit(clip):
    """SyncFreeStep (scrub on every step, clipping factor on the device, the learning rate as a
    device tensor) gives exactly train_step's losses, gradient norms and weights over 12 Adam
    steps on a CPU, through NaN gradients (steps 3 and 7), clipping and a change of rate."""
    from ava.train.step import SyncFreeStep

    runs = []
    for sync_free in (False, True):
        network, batches = _conv_problem()
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
        step = SyncFreeStep(network, optimizer, _ConvWeights(), clip) if sync_free else None
        values = []
        for index, batch in enumerate(batches):
            if index == 6:
                optimizer.param_groups[0]["lr"] = 3e-3  # as the scheduler does
            result = step(batch, _conv_terms) if sync_free else train_step(network, optimizer, batch, _conv_terms,
                                                                            _ConvWeights(), clip)
            values.append(result.values.clone())
        assert isinstance(optimizer.param_groups[0]["lr"], float)  # the group keeps its float
        runs.append((torch.stack(values), [parameter.detach().clone() for parameter in network.parameters()]))
    (eager_values, eager_weights), (free_values, free_weights) = runs
    network, batches = _conv_problem()
    _conv_terms(network, batches[3])[1]["poison"].backward()
    assert torch.isnan(network[0].weight.grad).any()  # step 3's gradient is poisoned ...
    assert torch.isfinite(eager_values[:, -1]).all()  # ... and scrubbed before the norm
    assert torch.equal(free_values.nan_to_num(), eager_values.nan_to_num())
    for got, expected in zip(free_weights, eager_weights):
        assert torch.equal(got, expected)


def test_sync_free_sanitising_reads_nothing_back(monkeypatch):
    """With a scrub function, sanitise_gradients never converts a tensor to a Python value."""
    from ava.kernels.nonfinite import ZeroNonfinite
    from ava.train.losses import sanitise_gradients

    parameters = [torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(3, 2))]
    parameters[0].grad = torch.tensor([1.0, float("nan"), 2.0, float("inf"), -3.0])
    parameters[1].grad = torch.full((3, 2), 4.0)

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read on the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    norm = sanitise_gradients(parameters, 1.0, ZeroNonfinite())
    monkeypatch.undo()
    expected = torch.linalg.vector_norm(torch.tensor([1.0, 2.0, -3.0] + [4.0] * 6))
    torch.testing.assert_close(norm, expected)
    torch.testing.assert_close(parameters[0].grad, torch.tensor([1.0, 0.0, 2.0, 0.0, -3.0]) / (expected + 1e-6))


def test_zero_nonfinite_matches_nan_to_num():
    """The one-launch scrub (run by Triton's interpreter on a CPU; compiled with AVA_TEST_DEVICE=cuda)
    against torch.nan_to_num_ on tensors of many sizes, one larger than a program's block, one
    non-contiguous (handled by the reference)."""
    import os

    from ava.kernels.nonfinite import BLOCK, ZeroNonfinite, zero_nonfinite_reference

    generator = torch.Generator().manual_seed(0)
    shapes = [(1,), (7, 3), (BLOCK + 5,), (2, 3, 4), (0,), (33,)]
    tensors = []
    for shape in shapes:
        tensor = torch.randn(*shape, generator=generator) * 1e30
        if tensor.numel():
            flat = tensor.view(-1)
            picks = torch.randint(0, flat.numel(), (max(1, flat.numel() // 5),), generator=generator)
            flat[picks[0::3]] = float("nan")
            flat[picks[1::3]] = float("inf")
            flat[picks[2::3]] = -float("inf")
        tensors.append(tensor)
    tensors.append(torch.randn(6, 4, generator=generator).t())  # non-contiguous
    tensors[-1][0, 1] = float("nan")
    tensors = [tensor.to(os.environ.get("AVA_TEST_DEVICE", "cpu")) for tensor in tensors]
    expected = [tensor.clone() for tensor in tensors]
    zero_nonfinite_reference(expected)
    ZeroNonfinite()(tensors)
    for got, want in zip(tensors, expected):
        assert torch.equal(got, want)
    assert not any(torch.isnan(tensor).any() or torch.isinf(tensor).any() for tensor in tensors)


def test_device_learning_rate_follows_the_groups_float():
    from ava.train.step import DeviceLearningRate

    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([parameter], lr=0.5)
    rate = DeviceLearningRate(optimizer)
    with rate.installed():
        assert optimizer.param_groups[0]["lr"] is rate.tensors[0] and float(rate.tensors[0]) == 0.5
    assert optimizer.param_groups[0]["lr"] == 0.5
    optimizer.param_groups[0]["lr"] = 0.25
    rate.update()
    assert float(rate.tensors[0]) == 0.25 and rate.tensors[0].dtype == torch.float64


def test_static_batch_holds_each_batch_at_fixed_addresses():
    """The captured step reads fixed buffers: staging and loading puts each batch there (plain
    copies on a CPU), non-tensor entries pass through, and a batch of other shapes is refused."""
    from ava.train.graph import StaticBatch

    first = {"image": torch.rand(2, 3, 4, 5), "index": torch.tensor([1, 2]), "name": ["a", "b"]}
    static = StaticBatch(first, torch.device("cpu"))
    address = static.buffers["image"].data_ptr()
    for batch in (first, {"image": torch.rand(2, 3, 4, 5), "index": torch.tensor([7, 8]), "name": ["c", "d"]}):
        loaded = static.load(static.stage(batch))
        assert loaded["image"].data_ptr() == address
        assert torch.equal(loaded["image"], batch["image"]) and torch.equal(loaded["index"], batch["index"])
        assert loaded["name"] == batch["name"]
    with pytest.raises(ValueError, match="image"):
        static.stage({"image": torch.rand(1, 3, 4, 5), "index": torch.tensor([1, 2])})


def test_step_modes_resolve_per_device():
    from ava.errors import UserError
    from ava.train.runner import resolve_step_mode

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_step_mode("auto", cpu, False) == "eager"
    assert resolve_step_mode("auto", cuda, False) == "eager"  # until the GPU suite has measured graph
    assert resolve_step_mode("auto", cuda, True) == "eager"
    assert resolve_step_mode("sync-free", cpu, False) == "sync-free"
    with pytest.raises(UserError, match="CUDA"):
        resolve_step_mode("graph", cpu, False)
    with pytest.raises(UserError, match="torchrun"):
        resolve_step_mode("graph", cuda, True)
