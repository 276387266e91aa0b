"""One process or many: the torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE) and helpers.

The same command runs alone (world size 1, no process group) or under torchrun; on CUDA the
group uses NCCL, on a CPU gloo. Only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ava.errors import UserError

# Rank 0 may spend a long time alone (generating the demo data, writing checkpoints) while the
# others wait in a collective; the default 10 minutes would be too short for that.
GROUP_TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class Distributed:
    """Where this process stands: rank, local rank, world size and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather_objects(self, value) -> list:
        """[value of rank 0, rank 1, ...] on every rank (just [value] when alone)."""
        if not self.enabled:
            return [value]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_object(self, value):
        """Rank 0's `value` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise mean of a tensor over ranks (for logging losses)."""
        if not self.enabled:
            return values
        values = values.detach().clone()
        dist.all_reduce(values)
        return values / self.world_size

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def setup_distributed(device_choice: str) -> Distributed:
    """Reads the torchrun variables, picks the device and joins the process group when needed."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    want_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if want_cuda:
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible; "
                "start torchrun with --nproc-per-node at most the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        _join_group("nccl" if device.type == "cuda" else "gloo", rank, world_size)
    return Distributed(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def _join_group(backend: str, rank: int, world_size: int) -> None:
    """init_process_group from the torchrun environment. In an attempt that torchrun restarted
    (--max-restarts), the keys go under a prefix of their own: the rendezvous store outlives the
    attempts, and gloo or NCCL would otherwise now and then read the dead attempt's addresses
    (connectFullMesh failing with "Connection refused"; pytorch/pytorch#135712)."""
    attempt = _env_int("TORCHELASTIC_RESTART_COUNT", 0)
    if attempt < 1:
        dist.init_process_group(backend=backend, timeout=GROUP_TIMEOUT)
        return
    store, rank, world_size = next(dist.rendezvous("env://", rank, world_size, timeout=GROUP_TIMEOUT))
    store.set_timeout(GROUP_TIMEOUT)
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"ava-attempt-{attempt}", store), rank=rank,
                            world_size=world_size, timeout=GROUP_TIMEOUT)
