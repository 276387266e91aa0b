"""Stopping a run cleanly: Ctrl-C (SIGINT) or a scheduler's SIGTERM asks the loop to finish the
current step, write a checkpoint and exit with status 130; a second Ctrl-C stops at once."""

from __future__ import annotations

import signal
import threading

INTERRUPTED = 130  # the shell's status for a command ended by SIGINT (128 + 2)


class StopRequest:
    """While entered, SIGINT and SIGTERM set `requested` instead of ending the process (only in
    the main thread, where Python delivers signals). A second SIGINT raises KeyboardInterrupt."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def install(self) -> "StopRequest":
        """Takes over SIGINT and SIGTERM (until `uninstall`); returns itself."""
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Gives the signals back to the handlers they had before `install`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> "StopRequest":
        return self.install()

    def __exit__(self, *exc_info) -> None:
        self.uninstall()

    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: a worker leaves SIGINT/SIGTERM to the training process, which
    shuts it down after writing its checkpoint (a worker dying first would abort the run)."""
    for signum in StopRequest.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
