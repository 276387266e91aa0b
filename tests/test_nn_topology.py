"""Choosing the topology and fetching the original one (against a local HTTP server)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import pytest

import ava.nn.topology as topology_module
from ava.errors import UserError
from ava.nn.topology import resolve_topology, topology_path
from ava.nn.uvmap import format_obj, parse_obj

OBJ = "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(topology_module, "ATTEMPTS", 1)
    return tmp_path / "cache"


def test_fetches_once_checks_the_hash_and_then_works_offline(server, cache, monkeypatch):
    root, base = server
    (root / "face_topology.obj").write_text(OBJ)
    monkeypatch.setattr(topology_module, "ORIGINAL_TOPOLOGY_SHA256", hashlib.sha256(OBJ.encode()).hexdigest())
    monkeypatch.setenv("AVA_TOPOLOGY_URL", f"{base}/face_topology.obj")
    first = resolve_topology(None)
    assert first.faces.tolist() == [[0, 1, 2]]
    assert (cache / "topology" / "face_topology.obj").read_text() == OBJ
    (root / "face_topology.obj").unlink()  # the server no longer has it: the cache must serve
    assert topology_path(None) == cache / "topology" / "face_topology.obj"


def test_a_wrong_hash_or_a_missing_file_is_refused(server, cache, monkeypatch):
    root, base = server
    (root / "face_topology.obj").write_text(OBJ + "# altered\n")
    monkeypatch.setattr(topology_module, "ORIGINAL_TOPOLOGY_SHA256", hashlib.sha256(OBJ.encode()).hexdigest())
    monkeypatch.setenv("AVA_TOPOLOGY_URL", f"{base}/face_topology.obj")
    with pytest.raises(UserError, match="SHA-256"):
        topology_path(None)
    assert not (cache / "topology" / "face_topology.obj").exists()
    monkeypatch.setenv("AVA_TOPOLOGY_URL", f"{base}/nothing-here.obj")
    with pytest.raises(UserError, match="--model.topology"):
        topology_path(None)


def test_explicit_path_then_dataset_topology_take_precedence(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("AVA_TOPOLOGY_URL", "http://127.0.0.1:9/unreachable.obj")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "face_topology.obj").write_text(OBJ)
    explicit = tmp_path / "mine.obj"
    quad = parse_obj("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nf 1/1 2/2 3/3 4/4\n")
    explicit.write_text(format_obj(quad))
    assert resolve_topology(str(explicit), dataset).faces.shape == (2, 3)
    assert resolve_topology(None, dataset).faces.shape == (1, 3)
    with pytest.raises(UserError, match="does not exist"):
        topology_path(str(tmp_path / "nope.obj"), dataset)
    with pytest.raises(UserError, match="cannot download"):
        topology_path(None, tmp_path)  # no topology in this folder and no network


def test_the_original_can_come_from_a_local_copy(tmp_path, cache, monkeypatch):
    """$AVA_TOPOLOGY_URL may be a path or a file:// URL (machines without access to GitHub); the
    copy is still checked against the SHA-256."""
    copy = tmp_path / "copy.obj"
    copy.write_text(OBJ)
    monkeypatch.setattr(topology_module, "ORIGINAL_TOPOLOGY_SHA256", hashlib.sha256(OBJ.encode()).hexdigest())
    monkeypatch.setenv("AVA_TOPOLOGY_URL", str(copy))
    assert topology_path(None).read_text() == OBJ
    (cache / "topology" / "face_topology.obj").unlink()
    monkeypatch.setenv("AVA_TOPOLOGY_URL", copy.as_uri())
    assert topology_path(None).read_text() == OBJ
    (cache / "topology" / "face_topology.obj").unlink()
    copy.write_text(OBJ + "# altered\n")
    with pytest.raises(UserError, match="SHA-256"):
        topology_path(None)
    monkeypatch.setenv("AVA_TOPOLOGY_URL", str(tmp_path / "missing.obj"))
    with pytest.raises(UserError, match="cannot read the Ava-256 face topology"):
        topology_path(None)
