"""A multi-process run whose process dies (killed, out of memory) or hangs: the others stop within
a bounded time with a message saying which, instead of waiting in a collective for the process
group's timeout (hours: rank 0 alone may take long over data generation, evaluations and
checkpoints while the others wait).

Two mechanisms, both only with several processes (docs/training.md#what-is-guaranteed):

- A collective that fails because a peer went away (gloo reports the closed connection at once,
  NCCL's error handling after its own timeout) ends the process with one line
  (`peer_failure_message`) and exit status PEER_LOST, instead of a traceback.
- The heartbeat (`Watchdog`): every process writes a counter to the run's rendezvous store
  (torchrun's, at MASTER_ADDR:MASTER_PORT) every few seconds from a background thread, and
  reads the others'. A process whose counter has not moved for `AVA_PEER_TIMEOUT` seconds
  (default 60) is declared lost, and every other process prints which and exits with PEER_LOST
  at once (whatever its main thread is waiting for), at most about 1.2 x the timeout after the
  loss. A process that ends with an error first writes that error to the store, so the others
  stop at once naming it; a process that finishes writes that it is done.

torchrun then ends or, with `--max-restarts N`, restarts every process, and a restarted attempt
resumes from the newest checkpoint (ava.train.setup.resume_restarted_attempt).
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import threading
import time
from typing import Callable

import torch.distributed as dist

PEER_LOST = 75  # EX_TEMPFAIL: the run can continue (torchrun --max-restarts, or --resume auto)
TIMEOUT_ENV = "AVA_PEER_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
_DONE = "done"
_FAILED = "failed: "
# What a collective raises when a peer's connection is gone: gloo's transport errors, NCCL's
# remote-error and timeout reports, the store's lost connection.
_PEER_ERROR = re.compile(r"Connection (reset|closed) by peer|Broken pipe|remote process exited|Socket Timeout|"
                         r"NCCL (error|communicator was aborted)|Watchdog caught collective|Connection refused|"
                         r"failed to recv|failed to send", re.IGNORECASE)


def peer_timeout() -> float:
    """Seconds without a heartbeat after which a peer is lost (AVA_PEER_TIMEOUT, default 60)."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, "") or DEFAULT_TIMEOUT)
    except ValueError:
        value = DEFAULT_TIMEOUT
    return max(value, 2.0)


def is_peer_failure(error: BaseException) -> bool:
    """Whether `error` is a collective (or the store) failing because another process went away."""
    distributed_error = getattr(dist, "DistError", None)
    return (distributed_error is not None and isinstance(error, distributed_error)) or \
        (isinstance(error, RuntimeError) and _PEER_ERROR.search(str(error)) is not None)


def peer_failure_message(rank: int, error: BaseException | str) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"rank {rank}: lost another process of the run ({first[:300]}); it was killed, ran out of memory or "
            f"hangs. This process stops; the checkpoints written so far are intact: torchrun --max-restarts "
            f"restarts the run from the newest, or rerun the same command with --resume auto")


class Watchdog:
    """The heartbeat of one process (see the module docstring). `report` prints one line."""

    def __init__(self, rank: int, world_size: int, report: Callable[[str], None] | None = None,
                 timeout: float | None = None, exit: Callable[[int], None] = os._exit) -> None:
        self.rank, self.world_size = rank, world_size
        self.timeout = peer_timeout() if timeout is None else timeout
        self.interval = min(5.0, self.timeout / 5)
        self.report = report or (lambda line: print(line, file=sys.stderr, flush=True))
        self._exit = exit
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store = None
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        run = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        self._prefix = f"ava-watchdog/{run}/{attempt}/"  # a restarted attempt starts clean

    def _key(self, rank: int) -> str:
        return f"{self._prefix}{rank}"

    def start(self) -> "Watchdog":
        """Connects to the rendezvous store and starts beating; without a store (no MASTER_ADDR),
        only the collective-error path guards the run."""
        host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if self.world_size < 2 or not host or not port:
            return self
        self._store = dist.TCPStore(host, int(port), is_master=False,
                                    timeout=datetime.timedelta(seconds=self.timeout), wait_for_workers=False)
        self._store.set(self._key(self.rank), "0")
        self._thread = threading.Thread(target=self._run, name="ava-watchdog", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        beats = 0
        seen: dict[int, tuple[str | None, float]] = {}
        started = last_contact = time.monotonic()
        others = [rank for rank in range(self.world_size) if rank != self.rank]
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            try:
                beats += 1
                self._store.set(self._key(self.rank), str(beats))
                for rank in others:
                    value = self._store.get(self._key(rank)).decode() if self._store.check([self._key(rank)]) \
                        else None
                    if value == _DONE:
                        continue
                    if value is not None and value.startswith(_FAILED):
                        self._lost(f"rank {self.rank}: rank {rank} failed ({value[len(_FAILED):]}); stopping too")
                        return
                    previous, since = seen.get(rank, (None, started))
                    if value != previous:
                        seen[rank] = (value, now)
                    elif now - since > self.timeout:
                        self._lost(peer_failure_message(
                            self.rank, f"rank {rank} has sent no heartbeat for {now - since:.0f} s"))
                        return
                last_contact = now
            except Exception as error:  # noqa: BLE001 - the store itself is gone (its host died)
                if self._stop.is_set():
                    return
                if time.monotonic() - last_contact > self.timeout:
                    self._lost(peer_failure_message(self.rank, f"the run's rendezvous store is unreachable: {error}"))
                    return

    def _lost(self, line: str) -> None:
        if self._stop.is_set():
            return
        self.report(line)
        self._exit(PEER_LOST)

    def _finish(self, value: str) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval)
        if self._store is not None:
            try:
                self._store.set(self._key(self.rank), value)
            except Exception:  # noqa: BLE001 - the store may be gone already; nothing to tell then
                pass

    def done(self) -> None:
        """This process finished (or stopped cleanly at a checkpoint): the others need not wait for it."""
        self._finish(_DONE)

    def failed(self, error: BaseException) -> None:
        """This process ends with `error`: the others stop at once, naming it."""
        message = " ".join(str(error).split())[:300] or type(error).__name__
        self._finish(_FAILED + message)
