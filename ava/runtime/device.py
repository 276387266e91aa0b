"""Where a command computes: the device, and how many CPU threads torch uses.

Threads: torch's own default is one thread per core, which can be the fastest choice on an idle
machine and is a poor one on a busy one: its OpenMP threads wait for each other after every
parallel operation, so when other jobs share the cores one descheduled thread stalls the rest
(on a shared 2-core machine, two threads made a demo step 4-5x and `ava render` 6-12x slower than
one thread: BENCHMARKS.md, "CPU threads"). ava's default (`auto_threads`) therefore uses half the
cores this process may run on, at most 4; `--threads N` overrides it.

Every compute command takes the same flag: give its config a field `threads: ThreadsFlag = 0`
and call `use_threads(config.threads)` before the work starts (see ava/cli/render.py).
Torch is imported inside the functions, so config modules can import `ThreadsFlag` and keep
`ava --help` fast.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import tyro

from ava.errors import UserError

if TYPE_CHECKING:
    import torch

MAX_AUTO_THREADS = 4
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: a container's CPU quota

ThreadsFlag = Annotated[int, tyro.conf.arg(
    metavar="N",
    help="CPU threads for torch in this process (0: half of the usable cores, at most "
    f"{MAX_AUTO_THREADS}, which stays fast when other jobs share the machine; torch's own default "
    "is every core).",
)]
"""The type of every command's `threads` field: `threads: ThreadsFlag = 0`."""


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may run on: its CPU affinity, and the cgroup's CPU quota (`cpu_max`,
    "QUOTA PERIOD" in microseconds, or "max") if lower."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # cgroup v1 or no limit
    return max(1, cores)


def auto_threads(processes: int = 1) -> int:
    """ava's default thread count for each of `processes` processes sharing the usable cores:
    half the cores per process, at least 1 and at most MAX_AUTO_THREADS."""
    return max(1, min(MAX_AUTO_THREADS, usable_cores() // (2 * max(1, processes))))


def use_threads(requested: int, processes: int = 1) -> int:
    """Sets torch's intra-op threads: `requested` if positive, else `auto_threads(processes)`.
    Returns the count. Raises UserError for a negative count."""
    import torch

    if requested < 0:
        raise UserError(f"--threads must be at least 0 (0: automatic), got {requested}")
    count = requested or auto_threads(processes)
    torch.set_num_threads(count)
    return count


def threads_note(count: int) -> str:
    """'1 CPU thread' / '4 CPU threads', for the line a command prints when it starts."""
    return f"{count} CPU thread" + ("" if count == 1 else "s")


def select_device(choice: str) -> "torch.device":
    """`choice` is "auto" (CUDA when torch sees a GPU, else the CPU), "cuda" or "cpu"."""
    import torch

    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def time_mark(device: "torch.device"):
    """A point in time for timing work on `device`: a CUDA event recorded now on the current
    stream (it fires when the device gets there), else the host clock in seconds. See
    `seconds_between`."""
    if device.type == "cuda":
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    import time

    return time.perf_counter()


def seconds_between(start, end) -> float:
    """Seconds between two `time_mark`s of one device (CUDA events must have completed)."""
    if isinstance(start, float):
        return end - start
    return start.elapsed_time(end) / 1000
