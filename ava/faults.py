"""Named crash points, so that tests can end a run as abruptly as `kill -9` at an exact moment
(docs/training.md#what-is-guaranteed lists what survives).

`crash_point(name)` costs one dictionary lookup and does nothing unless a test asked for it:

- `AVA_CRASH_AT=NAME[:N][@R]` in the environment ends the process with `os._exit(CRASH_STATUS)`
  the N-th time (default 1) the point NAME is reached, on rank R only when `@R` is given. Nothing
  runs after it (no `finally`, no atexit, no buffered Python output), as with SIGKILL. It never
  fires in a restarted attempt of an elastic run (TORCHELASTIC_RESTART_COUNT > 0), so that a test
  of `torchrun --max-restarts` crashes exactly once.
- `set_handler(function)` instead calls `function(name, **context)` at every point, in-process
  (a test snapshots the run folder there to check every crash point of a run in one go).

When the point is in the middle of writing a file, the caller passes `partial=path`: the crash
then first cuts that file to half its length, as a kill in the middle of the write leaves it.

The points: `after-step` (the optimiser step is done, its metrics line not yet written; context
`step`), `metrics-logged` (`step`), `checkpoint-written` (a checkpoint's temporary file is
written, not yet renamed into place; `partial`), `checkpoint-renamed` (in place, `latest` not
yet rewritten), `latest-written` (`latest` rewritten, old checkpoints not yet pruned) and
`pruned`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

CRASH_ENV = "AVA_CRASH_AT"
CRASH_STATUS = 86
POINTS = ("after-step", "metrics-logged", "checkpoint-written", "checkpoint-renamed", "latest-written", "pruned")

_handler: Callable[..., None] | None = None
_counts: dict[str, int] = {}
_lock = threading.Lock()


def set_handler(handler: Callable[..., None] | None) -> None:
    """Calls `handler(name, **context)` at every crash point from now on (None: stop)."""
    global _handler
    _handler = handler
    _counts.clear()


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def _wanted(name: str) -> bool:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return False
    point, _, rank = spec.partition("@")
    point, _, count = point.partition(":")
    if point != name or (rank and int(rank) != _rank()):
        return False
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
        return False
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        return _counts[name] == int(count or 1)


def crash_point(name: str, partial: str | Path | None = None, **context) -> None:
    """Crashes here if a test asked for it (see the module docstring); otherwise nothing."""
    if _handler is not None:
        _handler(name, partial=partial, **context)
        return
    if not _wanted(name):
        return
    if partial is not None and Path(partial).exists():
        size = Path(partial).stat().st_size
        os.truncate(partial, size // 2)
    os._exit(CRASH_STATUS)
