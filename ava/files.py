"""Durable files: the cache folder, output folders, and writes that a crash cannot leave half
done (with the permissions any other new file would get)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ava.errors import UserError

CACHE_ENV = "AVA_CACHE_DIR"


def cache_dir(*parts: str, create: bool = True) -> Path:
    """`$AVA_CACHE_DIR/<parts>` (default `~/.cache/ava/<parts>`), created unless create=False."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "ava"
    path = base.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def output_folder(path: str | Path, flag: str, create: bool = True) -> Path:
    """Checks the output folder `path` given with `flag` and creates it (and its parents) if
    missing and `create`; a UserError naming `flag` when it is a file or cannot be created."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; pass a folder (it is created if missing)")
    if not create:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write to output folder {path} ({flag}): {error.strerror or error}") from None
    return path


def process_umask() -> int:
    """The process's umask (read from /proc where possible: setting it to read it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_mode(path: str | Path) -> None:
    """Sets `path`'s permissions to those of a newly created file (0o666 less the umask: usually
    0644), for files that a library created with tighter ones before they are renamed into place."""
    os.chmod(path, 0o666 & ~process_umask())


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


GZIP_MAGIC = b"\x1f\x8b"


def read_text(path: str | Path) -> str:
    """A UTF-8 text file of the data (JSON, CSV, a variance), gzip-compressed or not: `ava download`
    keeps an object that the server labels `Content-Encoding: gzip` as stored, since its size and
    MD5 refer to those bytes. UserError naming the file when it is not readable text."""
    import gzip
    import zlib

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise UserError(f"{path} is damaged gzip data ({error}); download it again") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte {error.start} is 0x{data[error.start]:02x}); is the file "
                        "damaged or of another kind?") from None


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
