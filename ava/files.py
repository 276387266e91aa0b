"""Durable files: the cache folder and writes that a crash cannot leave half done."""

from __future__ import annotations

import os
import threading
from pathlib import Path

CACHE_ENV = "AVA_CACHE_DIR"


def cache_dir(*parts: str, create: bool = True) -> Path:
    """`$AVA_CACHE_DIR/<parts>` (default `~/.cache/ava/<parts>`), created unless create=False."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "ava"
    path = base.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def fsync_directory(path: Path) -> None:
    """Makes a rename in `path` durable (POSIX only; Windows has no directory handles to sync)."""
    if os.name == "nt":
        return
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return  # some filesystems refuse directory handles; the rename itself is still atomic
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one: a
    temporary file beside it, flushed and fsynced, renamed over it, and the rename made durable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    finally:
        if temporary.exists():
            temporary.unlink()
