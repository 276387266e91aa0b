"""DistributedDataParallel set up for this model: what must be all-reduced, what broadcast.

DDP's safe defaults cost time on every step of this model:

- `find_unused_parameters=True` (the original's setting) walks the whole autograd graph after each
  forward to find parameters without a gradient. In ava's model the unused ones never change:
  the identity encoder's finest skip level (its 1x1 skip convolution and the combiner's last
  level) produces 3-channel maps at the UV size, and no decoder layer reads them because the
  last decoder layer has D or 3D channels (see ava.nn.decoders), in warm-up and after alike.
  During warm-up the position/rotation/scale residuals are multiplied by 0: zero gradients, but
  gradients, so those parameters are used. `plan_ddp` finds the unused set once, before DDP is
  built, by walking the graph of one forward per phase (warm-up, after) on a real sample. When
  the set is the same in every phase, those parameters are frozen (they would never have
  received a gradient, so Adam never moved them: the training is unchanged) and DDP runs without
  the search. Only when a configuration makes the set change between phases (a loss weight of 0
  can: with vertl1 = 0 the mesh head gets a gradient only after warm-up) does it fall back to
  the search.
- `broadcast_buffers=True` sends every buffer from rank 0 before each forward: here 113 MB for
  ava256, almost all constant index and barycentric maps, against 187 MB of gradients. Only the
  buffers a training forward writes need it (the warm-up's running primitive scale,
  `adaptwarps`); `plan_ddp` finds them by their version counters and `wrap_ddp` broadcasts just
  those before each forward, which keeps DDP's semantics (rank 0's value wins) for them.
- Gradients are views into DDP's buckets (`gradient_as_bucket_view`), saving a copy and the
  memory of a second gradient set; the bucket size is `--train.ddp-bucket-mb`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.distributed as dist

from ava.train.distributed import Distributed

PHASE_NAMES = {True: "warm-up", False: "after warm-up"}


@dataclass
class GraphProbe:
    """What one training forward per phase showed (phase: True for the warm-up form)."""

    unused: dict[bool, set[str]]
    """Per phase, the parameters (requiring grad) that no path from the loss reaches."""
    written_buffers: set[str]
    """Buffers some training forward modified in place."""


@dataclass
class DdpPlan:
    """How `wrap_ddp` sets DDP up; stored in config.json under resolved.ddp."""

    frozen: list[str] = field(default_factory=list)
    """Parameters no phase gives a gradient: requires_grad switched off, left out of DDP."""
    varying: list[str] = field(default_factory=list)
    """Parameters with a gradient in some phases only (they force find_unused_parameters)."""
    synced_buffers: list[str] = field(default_factory=list)
    """Buffers broadcast from rank 0 before every training forward."""
    bucket_mb: float = 25.0

    @property
    def find_unused_parameters(self) -> bool:
        return bool(self.varying)

    def describe(self, model: torch.nn.Module) -> str:
        """One line for the console."""
        parameters = dict(model.named_parameters())
        frozen_values = sum(parameters[name].numel() for name in self.frozen)
        line = f"DDP: buckets of {self.bucket_mb:g} MB"
        if self.frozen:
            line += (f"; {len(self.frozen)} parameter tensors ({frozen_values:,} values) never get a gradient in "
                     "this configuration and are left out")
        if self.varying:
            line += (f"; {len(self.varying)} have a gradient in one phase only (e.g. {self.varying[0]}), so DDP "
                     "searches for unused parameters every step")
        else:
            line += "; every other parameter gets a gradient every step (no search for unused ones)"
        if self.synced_buffers:
            line += f"; rank 0 broadcasts {', '.join(self.synced_buffers)} before each step"
        return line

    def to_dict(self) -> dict:
        return {"frozen": self.frozen, "varying": self.varying, "synced_buffers": self.synced_buffers,
                "bucket_mb": self.bucket_mb, "find_unused_parameters": self.find_unused_parameters}


def _reached_parameters(loss: torch.Tensor) -> set[int]:
    """ids of the leaf tensors whose gradient accumulator the autograd graph of `loss` reaches."""
    reached: set[int] = set()
    seen: set = set()
    pending = [loss.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad nodes hold their leaf
        if variable is not None:
            reached.add(id(variable))
        pending.extend(child for child, _ in node.next_functions)
    return reached


def probe_graph(model: torch.nn.Module, loss_of: Callable[[bool], torch.Tensor], phases: Iterable[bool],
                device: torch.device) -> GraphProbe:
    """Runs `loss_of(phase)` (a training forward and its loss) once per phase and reads the graph;
    no backward. The model's buffers and the RNG state (CPU, and `device` on CUDA) are restored
    afterwards, so the run continues as if the probe had not happened."""
    parameters = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    buffers = dict(model.named_buffers())
    saved = {name: buffer.detach().clone() for name, buffer in buffers.items()}
    versions = {name: buffer._version for name, buffer in buffers.items()}
    unused: dict[bool, set[str]] = {}
    cuda = [device] if device.type == "cuda" else []
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=cuda), torch.enable_grad():
            for phase in phases:
                reached = _reached_parameters(loss_of(phase))
                unused[phase] = {name for name, parameter in parameters.items() if id(parameter) not in reached}
    finally:
        written = {name for name, buffer in buffers.items() if buffer._version != versions[name]}
        with torch.no_grad():
            for name in written:
                buffers[name].copy_(saved[name])
        model.train(was_training)
    return GraphProbe(unused=unused, written_buffers=written)


def plan_ddp(probe: GraphProbe, bucket_mb: float) -> DdpPlan:
    """Freezes what is unused in every phase; any parameter unused in some phases only is
    `varying` (DDP must then search for unused parameters)."""
    phases = list(probe.unused.values())
    never = set.intersection(*phases) if phases else set()
    sometimes = set.union(*phases) - never if phases else set()
    return DdpPlan(frozen=sorted(never), varying=sorted(sometimes), synced_buffers=sorted(probe.written_buffers),
                   bucket_mb=bucket_mb)


def _ddp_options() -> dict:
    """Buffer and gradient-copy options under the names this torch knows (torch 2.13 renamed
    broadcast_buffers to forward_sync_buffers and added batched_grad_copy)."""
    known = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    options = {"forward_sync_buffers": False} if "forward_sync_buffers" in known else {"broadcast_buffers": False}
    if "batched_grad_copy" in known:
        # One copy and one division per bucket instead of per parameter (hundreds of launches).
        options["batched_grad_copy"] = True
    return options


def wrap_ddp(model: torch.nn.Module, ctx: Distributed, plan: DdpPlan) -> torch.nn.Module:
    """`model` in DistributedDataParallel as `plan` says (call on every rank, in the same order)."""
    parameters = dict(model.named_parameters())
    for name in plan.frozen:
        parameters[name].requires_grad_(False)
    network = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        bucket_cap_mb=plan.bucket_mb, gradient_as_bucket_view=True,
        find_unused_parameters=plan.find_unused_parameters, **_ddp_options())
    buffers = dict(model.named_buffers())
    synced = [buffers[name] for name in plan.synced_buffers]
    if synced:
        def broadcast_written_buffers(module, args, kwargs):
            # Before each training forward, as DDP's own buffer broadcast would (evaluation calls
            # the bare model on rank 0 alone, so it must not run there).
            for buffer in synced:
                dist.broadcast(buffer, src=0)

        network.register_forward_pre_hook(broadcast_written_buffers, with_kwargs=True)
    return network
