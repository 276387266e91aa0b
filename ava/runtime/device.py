"""Where a command computes: the device, and how many CPU threads torch uses.

Threads: torch's own default is one thread per core, which is the fastest choice on an idle
machine and a poor one on a busy one: its OpenMP threads wait for each other after every parallel
operation, so when other jobs keep the cores busy one descheduled thread stalls the rest (on a
2-core machine under a load of 6-8, two threads made a demo step 5x and `ava render` 6-12x slower
than one thread), while on cores that are really free more threads are faster (at a load of
about 0.5 from other jobs, two threads ran the demo step at 1.07 s against 1.41-1.65 s for one).
ava's default (`choose_threads`) therefore counts the cores that other jobs leave free, from the
1-minute load average measured when the command starts, and uses that many threads (at least 1,
at most 4); `--threads N` overrides it. BENCHMARKS.md, "CPU threads", has the measurements.

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
    help="CPU threads for torch in this process (0: the cores that other jobs leave free, from the "
    f"load average at the start, at least 1 and at most {MAX_AUTO_THREADS}; torch's own default, every "
    "core, slows down several-fold when other jobs share them).",
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


def machine_load() -> tuple[float, int]:
    """(the 1-minute load average, the machine's cores it is spread over); (0, 1) where the
    system has no load average."""
    try:
        return os.getloadavg()[0], os.cpu_count() or 1
    except (AttributeError, OSError):  # not on a Unix
        return 0.0, 1


def choose_threads(cores: int, load: float, machine_cores: int | None = None, processes: int = 1,
                   most: int = MAX_AUTO_THREADS) -> int:
    """Threads for each of `processes` processes on `cores` usable cores when the machine's
    1-minute load average is `load` over its `machine_cores` cores (default: `cores`; a container
    or CPU set sees the whole host's load): the cores the load leaves free, shared among the
    processes and rounded to the nearest count (half up), at least 1 and at most `most`.

    On a 2-core machine a load of up to 0.5 gives 2 threads, a higher one 1. A free core too few costs
    a thread that waits for a descheduled sibling (several-fold slower); a free core left unused
    costs at most the share it would have done, hence one thread as soon as the load takes more
    than half a core."""
    machine_cores = machine_cores or cores
    busy = cores * min(1.0, max(0.0, load) / max(1, machine_cores))  # the load's share of our cores
    free = (cores - busy) / max(1, processes)
    return max(1, min(most, cores, math.floor(free + 0.5)))


def auto_threads(processes: int = 1) -> int:
    """ava's default thread count for each of `processes` processes: `choose_threads` for the
    usable cores and the load average now."""
    load, machine_cores = machine_load()
    return choose_threads(usable_cores(), load, machine_cores, processes)


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
