"""Stopping a run cleanly (Ctrl-C, SIGTERM): the shared ava.runtime.interrupt, which `ava train`
and `ava train-driver` both use."""

from ava.runtime.interrupt import INTERRUPTED, StopRequest, ignore_stop_signals  # noqa: F401  (re-exported)
