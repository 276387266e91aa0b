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


PROBE_BYTES = 4096  # one block: a full disk refuses it, where an empty file would still be created


def output_folder(path: str | Path, flag: str, create: bool = True) -> Path:
    """Checks, before any work, that the output folder `path` (given with `flag`) can be written:
    a file must not stand in its place or in its parents' place, and a probe file of one block is
    written, flushed to disk and deleted in it (a read-only folder or file system, no permission,
    a full disk or quota all fail there). Creates the folder and its missing parents when
    `create`, else removes those it made for the probe. A UserError naming the folder, `flag`
    and the reason otherwise."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; pass a folder (it is created if missing)")
    missing = []
    existing = path
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write to output folder {path} ({flag}): {existing} is a file, not a folder")
    created: list[Path] = []
    try:
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue  # made by someone else meanwhile: theirs, not ours to remove
            created.append(folder)
        _probe_write(path)
    except OSError as error:
        raise UserError(f"cannot write to output folder {path} ({flag}): {error.strerror or error}") from None
    finally:
        if not create:
            for folder in reversed(created):
                try:
                    folder.rmdir()
                except OSError:
                    pass
    return path


def _probe_write(folder: Path) -> None:
    """Writes, fsyncs and deletes one block in `folder`; OSError when it cannot be written."""
    probe = folder / f".ava-write-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        try:
            probe.unlink()
        except FileNotFoundError:
            pass


def is_storage_error(error: OSError) -> bool:
    """Whether `error` is the machine's storage refusing a write (a full disk or quota, a
    read-only file system, a file too large, no permission) rather than a bug."""
    import errno

    names = ("ENOSPC", "EDQUOT", "EROFS", "EFBIG", "EACCES", "EPERM")
    return error.errno in {getattr(errno, name) for name in names if hasattr(errno, name)}


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
MAX_INFLATED_BYTES = 256 << 20  # the largest text file of a capture (a calibration) is about 100 kB


def inflate(data: bytes, wbits: int = 31, limit: int | None = None) -> bytes:
    """`data` decompressed (gzip with the default `wbits`, any number of members; zlib or raw
    deflate with zlib's other `wbits`), refusing to produce more than `limit` bytes (default
    MAX_INFLATED_BYTES; a gzip bomb): ValueError then, zlib.error or EOFError for damaged or cut data."""
    import zlib

    limit = MAX_INFLATED_BYTES if limit is None else limit
    out = bytearray()
    while True:
        stream = zlib.decompressobj(wbits=wbits)
        out += stream.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise ValueError(f"it inflates to more than {limit} bytes (a decompression bomb?); refused")
        if not stream.eof:
            raise EOFError("compressed data ended before the end-of-stream marker")
        data = stream.unused_data
        if not data or wbits != 31:
            return bytes(out)


def read_text(path: str | Path) -> str:
    """A UTF-8 text file of the data (JSON, CSV, a variance), gzip-compressed or not: `ava download`
    keeps an object that the server labels `Content-Encoding: gzip` as stored, since its size and
    MD5 refer to those bytes. UserError naming the file when it is not readable text."""
    import zlib

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    if data[:2] == GZIP_MAGIC:
        try:
            data = inflate(data)
        except (OSError, EOFError, ValueError, zlib.error) as error:
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
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except OSError as error:
        # Named by the file the caller asked for (a full disk fails in write() or fsync(), whose
        # errors carry no file name), so that one line can say what could not be written.
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None
    finally:
        if temporary.exists():
            temporary.unlink()
