"""The learning-rate schedule of docs/training.md: StepLR that stops changing after a set number of
changes.

Step numbering: `step` counts completed optimiser steps. Step index j (0-based) is a warm-up step
when j < warmup_iters; the learning rate at step index j is init * gamma^min(j // lr_scheduler_iter,
lr_scheduler_changes) (with one change this is exactly the original's schedule). A checkpoint
written after step s resumes at step index s.
"""

from __future__ import annotations

import torch

from ava.train.config import TrainSection


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainSection) -> torch.optim.lr_scheduler.StepLR:
    """StepLR with step size `lr_scheduler_iter` and factor `gamma`; advance it with `advance`."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=train.lr_scheduler_iter, gamma=train.gamma)


def learning_rate(train: TrainSection, step_index: int) -> float:
    """The learning rate of step index `step_index` (0-based)."""
    return train.init_learning_rate * train.gamma ** min(step_index // train.lr_scheduler_iter,
                                                         train.lr_scheduler_changes)


def set_learning_rate(optimizer: torch.optim.Optimizer, train: TrainSection, step_index: int) -> None:
    """Sets every parameter group's rate to the schedule's at `step_index` (after a resume)."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(train, step_index)


def advance(scheduler: torch.optim.lr_scheduler.StepLR, completed: int, train: TrainSection) -> None:
    """Steps the scheduler after optimiser step `completed` (1-based), until the last change: the
    original stops stepping after lr_scheduler_iter * lr_scheduler_changes steps."""
    if completed <= train.lr_scheduler_iter * train.lr_scheduler_changes:
        scheduler.step()
