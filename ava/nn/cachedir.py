"""Where the model layer keeps files it derives or downloads once (UV maps, the face topology)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "AVA_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """`$AVA_CACHE_DIR/<parts>` (default `~/.cache/ava/<parts>`), created on first use."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "ava"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
