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
