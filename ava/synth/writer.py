"""Writes a capture folder in the real layout (docs/data-layout.md), all or nothing.

Everything goes into a hidden sibling folder `.<name>.partial` first; `commit()` flushes and syncs
every file and renames the folder into place, so an interrupted run never leaves a capture that
looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

from ava.data.layout import CaptureLayout


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


class CaptureWriter:
    """Collects one capture's files and zip members; `commit()` moves the finished folder to `final_root`."""

    def __init__(self, final_root: Path) -> None:
        self.final_root = Path(final_root)
        self.partial_root = self.final_root.with_name(f".{self.final_root.name}.partial")
        if self.partial_root.exists():
            shutil.rmtree(self.partial_root)  # left by an interrupted run
        self.layout = CaptureLayout(self.partial_root)
        self._archives: dict[Path, zipfile.ZipFile] = {}

    def __enter__(self) -> "CaptureWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.abort()

    def add_member(self, archive: Path, member: str, data: bytes) -> None:
        """Appends a member to the zip `archive` (stored, like the release's image zips)."""
        handle = self._archives.get(archive)
        if handle is None:
            archive.parent.mkdir(parents=True, exist_ok=True)
            handle = zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED)
            self._archives[archive] = handle
        # A fixed timestamp keeps archives byte-identical from run to run.
        info = zipfile.ZipInfo(member, date_time=(2026, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        handle.writestr(info, data)

    def write(self, path: Path, data: bytes | str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)

    def write_json(self, path: Path, document: dict) -> None:
        self.write(path, json.dumps(document, indent=1))

    def commit(self) -> Path:
        for handle in self._archives.values():
            handle.close()
        self._archives = {}
        _fsync_tree(self.partial_root)
        if self.final_root.exists():
            shutil.rmtree(self.final_root)
        os.replace(self.partial_root, self.final_root)
        return self.final_root

    def abort(self) -> None:
        for handle in self._archives.values():
            handle.close()
        self._archives = {}
        shutil.rmtree(self.partial_root, ignore_errors=True)
