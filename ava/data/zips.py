"""Zip archives opened once per process and reused.

A `zipfile.ZipFile` holds an OS file handle and a parsed central directory; reopening it for every
member (as the original does) costs more than reading a small member. Handles cannot cross a
fork or a pickle safely, so the pool remembers the process id that opened them and starts afresh
in a new DataLoader worker.

Archives come from the internet: a member is read only if the size its header declares is at most
MAX_MEMBER_BYTES and, for members over a mebibyte, at most MAX_COMPRESSION_RATIO times its
compressed size (a zip bomb inflates a little data into gigabytes; zipfile itself never inflates a
member past its declared size, and then fails its CRC check).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

from ava.data.formats import BadMember

# The largest member of an Ava-256 capture is a full-size camera image (a few MB); a mesh PLY is
# about 100 kB. Members are stored, or deflated text and meshes (a few times smaller at most).
MAX_MEMBER_BYTES = 1 << 30
MAX_COMPRESSION_RATIO = 100
_RATIO_FROM_BYTES = 1 << 20


class ZipPool:
    """Lazily opened, per-process zip handles keyed by path."""

    def __init__(self) -> None:
        self._owner_pid = os.getpid()
        self._handles: dict[Path, zipfile.ZipFile] = {}

    def __getstate__(self) -> dict:
        return {}  # open handles never travel to another process

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def archive(self, path: Path) -> zipfile.ZipFile:
        """The open archive at `path`; raises BadMember when it is missing or not a zip."""
        if self._owner_pid != os.getpid():
            # Forked worker: the inherited handles share file offsets with the parent; drop them.
            self._handles = {}
            self._owner_pid = os.getpid()
        handle = self._handles.get(path)
        if handle is None:
            try:
                handle = zipfile.ZipFile(path)
            except FileNotFoundError:
                raise BadMember("archive is missing") from None
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
                raise BadMember(f"archive cannot be opened: {error}") from None
            self._handles[path] = handle
        return handle

    def read(self, path: Path, member: str) -> bytes:
        """The bytes of `member` in the archive at `path` (CRC checked by zipfile)."""
        archive = self.archive(path)
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise BadMember("member is missing") from None
        if info.file_size > MAX_MEMBER_BYTES:
            raise BadMember(f"member claims {info.file_size} bytes uncompressed, more than any capture file "
                            f"({MAX_MEMBER_BYTES}); refused")
        if info.file_size > _RATIO_FROM_BYTES and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size:
            raise BadMember(f"member would inflate {info.compress_size} bytes to {info.file_size} (a zip bomb); "
                            "refused")
        try:
            return archive.read(info)
        except KeyError:
            raise BadMember("member is missing") from None
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as error:
            raise BadMember(f"member is corrupt: {error}") from None
        except (NotImplementedError, RuntimeError) as error:  # unsupported compression, encryption
            raise BadMember(f"member cannot be read: {error}") from None

    def names(self, path: Path) -> set[str]:
        """The member names of the archive at `path`."""
        return set(self.archive(path).namelist())

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}
