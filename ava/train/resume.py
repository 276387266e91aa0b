"""Continuing a run: which checkpoint, whether it fits this run, and restoring everything a
checkpoint holds (weights, optimiser, schedule, step, every rank's RNG state)."""

from __future__ import annotations

from typing import Callable

import torch

from ava.errors import UserError
from ava.train.config import TrainConfig, config_to_dict
from ava.train.data import TrainingData
from ava.train.distributed import Distributed


def rng_state(ctx: Distributed) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG states as `rng.<cpu|cuda>.<rank>` tensors (collective: all ranks
    call it at the same step)."""
    mine = {"cpu": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(ctx.device)
    states = {}
    for rank, state in enumerate(ctx.gather_objects(mine)):
        for kind, tensor in state.items():
            states[f"rng.{kind}.{rank}"] = tensor
    return states


def restore_rng(extra: dict, ctx: Distributed, say: Callable) -> None:
    """Sets this rank's RNG states from a checkpoint's extra state (a note if it has none)."""
    cpu = extra.get(f"rng.cpu.{ctx.rank}")
    if cpu is None:
        say("[yellow]note:[/] the checkpoint has no RNG state for this rank; seeding afresh")
        return
    torch.set_rng_state(cpu.to(torch.uint8).cpu())
    cuda = extra.get(f"rng.cuda.{ctx.rank}")
    if cuda is not None and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(cuda.to(torch.uint8).cpu(), ctx.device)


def check_compatible(checkpoint, config: TrainConfig, data: TrainingData, topology) -> None:
    """A resumed or initialising checkpoint must have this run's model and index mappings."""
    problems = []
    saved_model = dict(checkpoint.config.get("model", {}))
    current_model = config_to_dict(config)["model"]
    for key in sorted(set(saved_model) | set(current_model)):
        if key != "topology" and saved_model.get(key) != current_model.get(key):
            problems.append(f"model.{key} is {saved_model.get(key)} there, {current_model.get(key)} here")
    identities = [capture.folder for capture in data.captures]
    if checkpoint.identities != identities:
        problems.append(f"identities {checkpoint.identities[:3]}... there, {identities[:3]}... here")
    if checkpoint.cameras != data.cameras:
        problems.append(f"{len(checkpoint.cameras)} cameras there, {len(data.cameras)} here")
    if tuple(checkpoint.topology.faces.shape) != tuple(topology.faces.shape) or \
            tuple(checkpoint.topology.verts.shape) != tuple(topology.verts.shape):
        problems.append("another mesh topology")
    if problems:
        raise UserError(f"checkpoint {checkpoint.path} comes from another configuration: " + "; ".join(problems)
                        + ". Resume with the flags it was trained with, or start a new --progress.output-path")
