"""A local HTTP server that serves a small tree in the Ava-256 remote layout, with injected faults.

Used by the download tests and by tools/bench_download.py. It speaks HTTP/1.1 with keep-alive,
answers HEAD and GET, honours `Range: bytes=N-` with 206 (unless told to ignore Range) and sends
an S3-style ETag (the quoted MD5 of the body), and can label objects with a Content-Encoding the
way S3 does (ranges and sizes then still count the stored bytes). Faults are set per URL path on `server.faults`;
"first" faults hit only the first GET of that path, so a retry then succeeds.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ava.data.ids import CaptureId
from ava.data.release import ASSET_GROUPS, CALIBRATION_PATH, RELEASE_WIDE, group_paths

_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass
class Faults:
    """What goes wrong, keyed by URL path (e.g. '/4TB/<capture>/decoder/frame_list.csv')."""

    drop_first: set[str] = field(default_factory=set)
    """First GET sends the headers and half the body, then closes the connection."""
    status_first: dict[str, list[int]] = field(default_factory=dict)
    """The first GETs answer these statuses in turn (e.g. [500] or [429, 503]), then succeed."""
    stall_first: dict[str, float] = field(default_factory=dict)
    """First GET waits this many seconds before answering (longer than the client's timeout)."""
    corrupt_first: set[str] = field(default_factory=set)
    """First GET sends a body with one byte flipped (right size, wrong MD5)."""
    forbidden: set[str] = field(default_factory=set)
    """Always 403, as S3 answers for a missing key in a bucket that may not be listed."""
    ignore_range: bool = False
    """Answer every GET with 200 and the whole body, as servers without Range support do."""
    multipart_etag: bool = False
    """Send ETags like '"<hex>-2"' (multipart uploads), which carry no plain MD5."""
    content_encoding: dict[str, str] = field(default_factory=dict)
    """Send `Content-Encoding: <value>` with these paths whatever the client's Accept-Encoding, as
    S3 does for objects uploaded with a content encoding. The stored bytes (and so Content-Length,
    Range offsets and the ETag) stay those in `files`: put gzip data there for 'gzip'."""
    chunked: set[str] = field(default_factory=set)
    """Send these paths without Content-Length, as chunked transfer (as some mirrors and caching
    proxies do): no Content-Length in HEAD either; a 206 still carries its Content-Range."""
    unknown_total: bool = False
    """With `chunked`: a 206's Content-Range ends in `/*` (the total is not said either)."""
    seconds_per_request: float = 0.0
    """Latency added before every answer (benchmarks)."""
    seconds_per_chunk: float = 0.0
    """Pause after every 64 KiB of body (slow transfers that Ctrl-C can interrupt)."""


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    range: str | None
    status: int


class DownloadServer:
    """`with DownloadServer(files) as server:` serves `files` ({URL path: bytes}) on 127.0.0.1."""

    def __init__(self, files: dict[str, bytes], faults: Faults | None = None):
        self.files = files
        self.faults = faults or Faults()
        self.log: list[LoggedRequest] = []
        self._gets: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        """What `--base-url` takes: the part before `<SIZE>/`."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "DownloadServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def requests_for(self, path: str, method: str = "GET") -> list[LoggedRequest]:
        with self._lock:
            return [entry for entry in self.log if entry.path == path and entry.method == method]

    def get_count(self, path: str) -> int:
        """GETs of `path` that arrived, answered or not (a stalled one may never be answered)."""
        with self._lock:
            return self._gets.get(path, 0)

    def _count_get(self, path: str) -> int:
        """How many GETs of `path` came before this one."""
        with self._lock:
            number = self._gets.get(path, 0)
            self._gets[path] = number + 1
            return number

    def _record(self, method: str, path: str, range_header: str | None, status: int) -> None:
        with self._lock:
            self.log.append(LoggedRequest(method, path, range_header, status))


def _handler_for(server: DownloadServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
            pass

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def _answer(self, send_body: bool) -> None:
            faults = server.faults
            path = self.path.split("?")[0]
            range_header = self.headers.get("Range")
            if faults.seconds_per_request:
                time.sleep(faults.seconds_per_request)
            number = server._count_get(path) if send_body else None
            if number == 0 and path in faults.stall_first:
                time.sleep(faults.stall_first[path])
            statuses = faults.status_first.get(path, [])
            if number is not None and number < len(statuses):
                return self._empty(statuses[number], range_header, retry_after="0")
            if path in faults.forbidden:
                return self._empty(403, range_header)
            body = server.files.get(path)
            if body is None:
                return self._empty(404, range_header)
            digest = hashlib.md5(body).hexdigest()
            etag = f'"{digest}-2"' if faults.multipart_etag else f'"{digest}"'
            start = 0
            match = _RANGE.match(range_header or "")
            if match and send_body and not faults.ignore_range:
                start = int(match.group(1))
                if start >= len(body):
                    return self._empty(416, range_header, content_range=f"bytes */{len(body)}")
            status = 206 if start else 200
            payload = body[start:]
            if number == 0 and path in faults.corrupt_first and payload:
                payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
            chunked = path in faults.chunked
            self.send_response(status)
            if not chunked:
                self.send_header("Content-Length", str(len(payload)))
            elif send_body:
                self.send_header("Transfer-Encoding", "chunked")
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            if path in faults.content_encoding:
                self.send_header("Content-Encoding", faults.content_encoding[path])
            if status == 206:
                total = "*" if chunked and faults.unknown_total else str(len(body))
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{total}")
            self.end_headers()
            server._record(self.command, path, range_header, status)
            if not send_body:
                return
            framed = _chunked(payload) if chunked else payload
            if number == 0 and path in faults.drop_first:
                self.wfile.write(framed[: len(framed) // 2])  # a chunked body then lacks its last chunk
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self._write_paced(framed)

        def _write_paced(self, payload: bytes) -> None:
            chunk = 1 << 16
            try:
                for offset in range(0, len(payload), chunk):
                    self.wfile.write(payload[offset : offset + chunk])
                    if server.faults.seconds_per_chunk:
                        self.wfile.flush()
                        time.sleep(server.faults.seconds_per_chunk)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _empty(self, status: int, range_header, retry_after=None, content_range=None) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            if retry_after is not None and status in (429, 503):
                self.send_header("Retry-After", retry_after)
            if content_range:
                self.send_header("Content-Range", content_range)
            self.end_headers()
            server._record(self.command, self.path, range_header, status)

    return Handler


def _chunked(payload: bytes, size: int = 1 << 14) -> bytes:
    """`payload` in HTTP/1.1 chunked transfer coding: sized chunks, then the empty last chunk."""
    pieces = [payload[offset : offset + size] for offset in range(0, len(payload), size)]
    return b"".join(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for piece in pieces) + b"0\r\n\r\n"


def calibration_json(camera_ids: list[str]) -> bytes:
    """A camera_calibration.json with identity-ish cameras; only the ids matter to the downloader."""
    cameras = [
        {
            "cameraId": camera_id,
            "K": [[1000.0, 0.0, 0.0], [0.0, 1000.0, 0.0], [333.0, 512.0, 1.0]],
            "T": [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 1000.0, 1.0]],
            "distortion": [0.0, 0.0, 0.0, 0.0],
            "distortionModel": "RadialAndTangential",
            "projectionModel": "Pinhole",
        }
        for camera_id in camera_ids
    ]
    return json.dumps({"KRT": cameras}).encode()


def remote_tree(
    captures: list[CaptureId], camera_ids: list[str], size: str = "4TB", file_bytes: int = 20_000, seed: int = 0,
    groups=tuple(ASSET_GROUPS),
) -> dict[str, bytes]:
    """Every file of `groups` (default: every asset group) for `captures`, and the release-wide
    files among them, as {URL path: random bytes}.

    File sizes vary around `file_bytes` (and differ from file to file, so a mix-up shows).
    `camera_ids` go into the calibration in the given order; the downloader must sort them.
    """
    generator = random.Random(seed)
    files = {}
    for capture in captures:
        for group in groups:
            if group in RELEASE_WIDE:
                continue
            for path in group_paths(group, camera_ids):
                if path == CALIBRATION_PATH:
                    body = calibration_json(camera_ids)
                else:
                    body = generator.randbytes(generator.randint(file_bytes // 2, file_bytes * 3 // 2))
                files[f"/{size}/{capture.folder}/{path}"] = body
    for group in groups:
        if group in RELEASE_WIDE:
            for path in group_paths(group):
                files[f"/{size}/{path}"] = generator.randbytes(generator.randint(file_bytes // 2, file_bytes * 3 // 2))
    return files
