"""Which mesh topology the model uses, and fetching the original one.

The real dataset does not ship its topology: it lives in the original repository. It is fetched
once into the cache and checked against a known SHA-256. Order of precedence:
`--model.topology PATH`, then `<dataset_dir>/face_topology.obj` (synthetic datasets write theirs
there), then the original's.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from ava.errors import UserError
from ava.files import cache_dir, write_atomically
from ava.nn.uvmap import Topology, load_obj

TOPOLOGY_FILENAME = "face_topology.obj"
ORIGINAL_TOPOLOGY_URL = (
    "https://raw.githubusercontent.com/facebookresearch/ava-256/"
    "a9d2fbe85c2139d1c072212287b484309f3460e7/assets/face_topology.obj"
)
ORIGINAL_TOPOLOGY_SHA256 = "15c1dd15f0138e5f55abfb85a49e29269ca57840cee2bb4e143b06df06b0d741"
URL_ENV = "AVA_TOPOLOGY_URL"
ATTEMPTS = 3


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download(url: str, flag: str) -> bytes:
    import requests

    last_error: Exception | None = None
    for attempt in range(ATTEMPTS):
        try:
            response = requests.get(url, timeout=60)
            if response.status_code == 200:
                return response.content
            last_error = RuntimeError(f"HTTP {response.status_code}")
            if response.status_code < 500 and response.status_code != 429:
                break  # a client error will not go away by asking again
        except requests.RequestException as error:
            last_error = error
        if attempt + 1 < ATTEMPTS:
            time.sleep(min(2.0**attempt, 10.0) * 0.5)
    raise UserError(
        f"cannot download the Ava-256 face topology from {url} ({last_error}); download it by hand "
        f"and pass {flag} PATH (or set {URL_ENV} to a mirror)"
    )


def _fetch(source: str, flag: str) -> bytes:
    """The bytes at `source`: an http(s) URL, a file:// URL or a local path."""
    if source.startswith(("http://", "https://")):
        return _download(source, flag)
    path = Path(source[len("file://"):] if source.startswith("file://") else source).expanduser()
    try:
        return path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read the Ava-256 face topology from {path} ({URL_ENV}): {error}") from None


def original_topology_path(flag: str = "--model.topology") -> Path:
    """Path of the original `face_topology.obj` in the cache, fetched and checked once (from the
    original repository, or from `$AVA_TOPOLOGY_URL`: a mirror URL, a file:// URL or a local path;
    `flag`: the command's flag for another OBJ, named in errors)."""
    path = cache_dir("topology") / TOPOLOGY_FILENAME
    if path.exists() and _sha256(path.read_bytes()) == ORIGINAL_TOPOLOGY_SHA256:
        return path
    url = os.environ.get(URL_ENV) or ORIGINAL_TOPOLOGY_URL
    data = _fetch(url, flag)
    digest = _sha256(data)
    if digest != ORIGINAL_TOPOLOGY_SHA256:
        raise UserError(
            f"the face topology from {url} has SHA-256 {digest}, expected {ORIGINAL_TOPOLOGY_SHA256}; "
            "refusing to use it (a proxy page or a different file?)"
        )
    write_atomically(path, data)
    return path


def topology_path(explicit: str | Path | None, dataset_dir: str | Path | None = None,
                  flag: str = "--model.topology") -> Path:
    """The OBJ to use: `explicit`, else `<dataset_dir>/face_topology.obj`, else the original's.
    `flag` is the command's flag that gave `explicit`, named in errors."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"{flag} {path} does not exist")
        return path
    if dataset_dir is not None:
        candidate = Path(dataset_dir) / TOPOLOGY_FILENAME
        if candidate.is_file():
            return candidate
    return original_topology_path(flag)


def resolve_topology(explicit: str | Path | None, dataset_dir: str | Path | None = None,
                     flag: str = "--model.topology") -> Topology:
    """Load the topology chosen by `topology_path`."""
    return load_obj(topology_path(explicit, dataset_dir, flag))
