"""Resumable, verified HTTP file transfer: the engine under `ava download`.

One call of `fetch_file` brings one remote object to a local path and never leaves a partial file
under the final name. Bytes go to `NAME.part`; a later call resumes that file with an HTTP Range
request (or starts it over when the server answers the whole object instead), and the file is
renamed into place only once its size matches the server's and, when the server's ETag is a plain
MD5 (S3 objects uploaded in one part), its MD5 matches too. A `.part` file is always a prefix of
the object because bytes are only ever appended in order, so a crash or Ctrl-C at any moment leaves
something the next run can resume.

Some mirrors and caching proxies send no Content-Length (chunked transfer). The file is then
complete when the body ends as its transfer encoding says it ends (a chunked body's last chunk),
its size is checked against a Content-Range total where a 206 carries one, and its MD5 against a
plain-MD5 ETag; a file for which the server gave neither size nor MD5 is accepted unverified
(`FileResult.verified` False), which the summary reports.

Files are saved byte for byte as the server stores them: a `Content-Encoding` (S3 sends one for
objects uploaded with it, whatever the client asks) is not undone, because the server's sizes,
Range offsets and MD5 all refer to the stored bytes. Only `fetch_bytes`, whose callers parse what
they get, decodes the body after checking its size.

Connection errors, timeouts, 5xx and 429 are retried with exponential backoff; other 4xx (403 and
404 above all: the larger size tiers miss files) fail at once. Every function here is safe to call
from several threads as long as each thread has its own `requests.Session`.
"""

from __future__ import annotations

import enum
import hashlib
import os
import random
import re
import threading
import zlib
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Callable, Iterator, Protocol, TypeVar

import requests

from ava.files import fsync_directory, inflate

CHUNK_BYTES = 1 << 16
_PLAIN_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")
# Errors below this line in the requests hierarchy all mean "the transfer broke, try again".
_TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)

Result = TypeVar("Result")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is repeated after a transient failure."""

    retries: int = 5
    """Extra attempts after the first one."""
    base_delay: float = 1.0
    """Seconds before the first retry; each further retry waits twice as long (with jitter)."""
    max_delay: float = 60.0
    """Upper bound on one wait, also for a server's Retry-After."""
    timeout: float = 30.0
    """Seconds to wait for a connection and, once connected, for each piece of the response."""

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        """The wait before retry `retry_number` (0 for the first retry)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        # Jitter keeps many workers that failed together from hammering the server in lockstep.
        backoff = self.base_delay * (2**retry_number) * random.uniform(0.75, 1.0)
        return min(backoff, self.max_delay)


class TransferError(Exception):
    """A failed request; `reason` is a short phrase such as '404 Not Found'."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class Stopped(Exception):
    """The caller asked all transfers to stop (Ctrl-C); partial files stay for the next run."""


class Outcome(enum.Enum):
    DOWNLOADED = "downloaded"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class FileResult:
    outcome: Outcome
    received_bytes: int = 0
    """Bytes that came over the network for this file in this call."""
    reason: str | None = None
    """Why it failed (None unless `outcome` is FAILED)."""
    verified: bool = True
    """False for a file accepted without a size or MD5 to check it against (the server sent neither)."""


@dataclass(frozen=True)
class RemoteInfo:
    size: int | None
    """The object's size in bytes; None when the server did not say (no Content-Length)."""
    md5: str | None
    """The object's MD5 as lower-case hex when its ETag is a plain MD5, else None."""


class ProgressSink(Protocol):
    """Receives byte counts from transfers in any thread."""

    def add_expected(self, nbytes: int) -> None:
        """More (or, when negative, fewer) bytes are now expected to arrive."""

    def add_received(self, nbytes: int) -> None:
        """`nbytes` arrived over the network."""


class _NoProgress:
    def add_expected(self, nbytes: int) -> None:
        pass

    def add_received(self, nbytes: int) -> None:
        pass


def status_reason(status: int) -> str:
    """'404 Not Found' for 404: the short form used in summaries."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def error_for_status(response: requests.Response) -> TransferError | None:
    """The TransferError a response stands for, or None for a success (2xx)."""
    status = response.status_code
    if status < 300:
        return None
    retryable = status >= 500 or status == 429
    retry_after = None
    if status == 429 or status == 503:
        try:
            retry_after = float(response.headers.get("Retry-After", ""))
        except ValueError:
            retry_after = None
    return TransferError(status_reason(status), retryable=retryable, retry_after=retry_after)


def transient_reason(error: Exception) -> str:
    """A short phrase for a network-level failure."""
    if isinstance(error, requests.Timeout):
        return "timed out"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return "connection dropped mid-transfer"
    if isinstance(error, requests.exceptions.ContentDecodingError):
        return "body could not be decoded as its Content-Encoding says"
    return "connection failed"


def with_retries(
    attempt: Callable[[], Result], policy: RetryPolicy, stop: threading.Event
) -> Result:
    """Runs `attempt` until it succeeds, a non-retryable TransferError escapes, or retries run out.

    Network errors from requests become retryable TransferErrors. Waits are interrupted by `stop`.
    """
    retry_number = 0
    while True:
        if stop.is_set():
            raise Stopped()
        try:
            return attempt()
        except _TRANSIENT_ERRORS as error:
            failure = TransferError(transient_reason(error), retryable=True)
        except TransferError as error:
            failure = error
        except requests.RequestException as error:
            # Invalid URLs, redirect loops and the like: repeating the request cannot help.
            failure = TransferError(type(error).__name__, retryable=False)
        if not failure.retryable or retry_number >= policy.retries:
            raise failure
        if stop.wait(policy.delay(retry_number, failure.retry_after)):
            raise Stopped()
        retry_number += 1


def remote_info(response: requests.Response) -> RemoteInfo:
    """Size and MD5 of the whole object from a 200 or HEAD response (size None without a
    Content-Length, as a chunked answer has)."""
    length = response.headers.get("Content-Length")
    size = int(length) if length is not None and length.isdigit() else None
    return RemoteInfo(size=size, md5=plain_md5(response.headers.get("ETag")))


def plain_md5(etag: str | None) -> str | None:
    """The MD5 in an ETag like '"9e107d9d372bb6826bd81d3542a419d6"'; None for multipart or weak ones."""
    if not etag:
        return None
    match = _PLAIN_MD5_ETAG.match(etag.strip())
    return match.group(1).lower() if match else None


def head(session: requests.Session, url: str, policy: RetryPolicy, stop: threading.Event) -> RemoteInfo:
    """Size and MD5 of a remote object where the server says them, with retries."""

    def attempt() -> RemoteInfo:
        with session.head(url, timeout=policy.timeout, allow_redirects=True) as response:
            failure = error_for_status(response)
            if failure:
                raise failure
            return remote_info(response)

    return with_retries(attempt, policy, stop)


def stored_chunks(response: requests.Response, chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The body of a streamed response exactly as the server stores it.

    requests undoes a `Content-Encoding` (gzip, deflate) on the fly, but Content-Length,
    Content-Range and the ETag's MD5 all describe the stored, still encoded bytes; and S3 sends
    `Content-Encoding: gzip` for an object uploaded with it whatever the client's Accept-Encoding.
    So the bytes are read raw, and urllib3's errors become the requests errors they stand for.
    """
    from urllib3.exceptions import ProtocolError, ReadTimeoutError, SSLError

    try:
        yield from response.raw.stream(chunk_size, decode_content=False)
    except ReadTimeoutError as error:
        raise requests.exceptions.ReadTimeout(error) from None
    except ProtocolError as error:
        raise requests.exceptions.ChunkedEncodingError(error) from None
    except SSLError as error:
        raise requests.exceptions.SSLError(error) from None


def decode_content(body: bytes, encoding: str | None) -> bytes:
    """`body` with its Content-Encoding (`gzip`, `deflate`, or a list of them) undone."""
    codings = [coding.strip().lower() for coding in (encoding or "").split(",") if coding.strip()]
    for coding in reversed(codings):  # the last coding listed was applied last
        try:
            if coding in ("gzip", "x-gzip"):
                body = inflate(body)
            elif coding == "deflate":
                body = inflate(body, wbits=zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS)
            elif coding != "identity":
                raise TransferError(f"server sent Content-Encoding {coding!r}, which ava cannot undo", retryable=False)
        except (OSError, EOFError, ValueError, zlib.error) as error:
            raise TransferError(f"body is not valid {coding} data although the server sent Content-Encoding "
                                f"{coding} ({error})", retryable=False) from None
    return body


def fetch_bytes(session: requests.Session, url: str, policy: RetryPolicy, stop: threading.Event) -> bytes:
    """A small remote object (a JSON or CSV file) in memory, with retries and a size check.

    The size is checked on the stored bytes; a Content-Encoding is then undone, because the
    caller parses the content.
    """

    def attempt() -> tuple[bytes, str | None]:
        with session.get(url, timeout=policy.timeout, stream=True) as response:
            failure = error_for_status(response)
            if failure:
                raise failure
            body = b"".join(stored_chunks(response))
            expected = response.headers.get("Content-Length")
            encoding = response.headers.get("Content-Encoding")
        if expected is not None and expected.isdigit() and int(expected) != len(body):
            raise TransferError(f"got {len(body)} of {expected} bytes", retryable=True)
        return body, encoding

    body, encoding = with_retries(attempt, policy, stop)
    return decode_content(body, encoding)


def part_path(destination: Path) -> Path:
    """Where the bytes of `destination` gather until they are complete and verified."""
    return destination.with_name(destination.name + ".part")


def fetch_file(
    session: requests.Session,
    url: str,
    destination: Path,
    policy: RetryPolicy,
    stop: threading.Event,
    progress: ProgressSink | None = None,
) -> FileResult:
    """Brings `url` to `destination` (see the module docstring); never raises TransferError.

    A destination that exists with the server's size is skipped; one with another size is fetched
    again and replaced only once the new copy is complete. Raises Stopped when `stop` is set.
    """
    transfer = _Transfer(session, url, Path(destination), policy, stop, progress or _NoProgress())
    try:
        if transfer.destination.exists():
            info = head(session, url, policy, stop)
            if already_here(transfer.destination, info):
                transfer.part.unlink(missing_ok=True)
                return FileResult(Outcome.SKIPPED)
        with_retries(transfer.attempt, policy, stop)
    except TransferError as error:
        transfer.give_up()
        return FileResult(Outcome.FAILED, transfer.received, error.reason)
    except OSError as error:
        # Local trouble (disk full, permissions) fails this file; the .part stays for a rerun.
        transfer.give_up()
        return FileResult(Outcome.FAILED, transfer.received, f"local file error: {error.strerror or error}")
    except Stopped:
        transfer.give_up()
        raise
    return FileResult(Outcome.DOWNLOADED, transfer.received, verified=transfer.verified)


def already_here(local: Path, info: RemoteInfo) -> bool:
    """Whether the file in place at `local` is the remote object: its size matches the server's,
    or, where the server gives no size, its MD5 matches the ETag's (with neither, it is kept: it
    was complete when it was renamed into place)."""
    if info.size is not None:
        return local.stat().st_size == info.size
    return info.md5 is None or file_md5(local) == info.md5


class _Transfer:
    """The state of one file across attempts: what arrived, what is still expected."""

    def __init__(self, session, url, destination: Path, policy, stop, progress: ProgressSink):
        self.session = session
        self.url = url
        self.destination = destination
        self.part = part_path(destination)
        self.policy = policy
        self.stop = stop
        self.progress = progress
        self.received = 0
        self.expected = 0  # bytes this file has announced to the progress sink so far
        self.verified = True

    def _expect_total(self, total_to_receive: int) -> None:
        self.progress.add_expected(total_to_receive - self.expected)
        self.expected = total_to_receive

    def give_up(self) -> None:
        """Withdraws the bytes that will not come now from the progress total."""
        self._expect_total(self.received)

    def attempt(self) -> None:
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        offset = self.part.stat().st_size if self.part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self.session.get(self.url, headers=headers, stream=True, timeout=self.policy.timeout) as response:
            if response.status_code == 416:
                # The .part is at least as long as the object: complete, or stale and too long.
                info = self._size_from_416(response)
                if info.size is not None and offset != info.size:
                    self._discard("partial file longer than the remote file")
                self._finish(info)
                return
            failure = error_for_status(response)
            if failure:
                raise failure
            info, offset = self._start(response, offset)
            if info.size is not None:
                self._expect_total(self.received + info.size - offset)
            self._receive(response, offset, announce=info.size is None)
        self._finish(info)

    def _size_from_416(self, response: requests.Response) -> RemoteInfo:
        """The object's size from a 416's `Content-Range: bytes */SIZE`, else from a HEAD."""
        match = _UNSATISFIED_RANGE.match(response.headers.get("Content-Range", ""))
        if match:
            return RemoteInfo(size=int(match.group(1)), md5=plain_md5(response.headers.get("ETag")))
        return head(self.session, self.url, self.policy, self.stop)

    def _start(self, response: requests.Response, offset: int) -> tuple[RemoteInfo, int]:
        """The object's size (None if the server does not say) and MD5 and where the body starts;
        truncates the .part on a 200."""
        if response.status_code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                self._discard("server answered a different range")
            size = None if match.group(3) == "*" else int(match.group(3))
            return RemoteInfo(size=size, md5=plain_md5(response.headers.get("ETag"))), offset
        # A 200 to a Range request carries the whole object: start the .part over.
        return remote_info(response), 0

    def _receive(self, response: requests.Response, offset: int, announce: bool) -> None:
        """Appends the body to the .part; `announce`: the size is unknown, so the progress total
        grows with what arrives."""
        with open(self.part, "r+b" if offset else "wb") as part_file:
            part_file.truncate(offset)
            part_file.seek(offset)
            for chunk in stored_chunks(response):
                if self.stop.is_set():
                    raise Stopped()
                part_file.write(chunk)
                self.received += len(chunk)
                if announce:
                    self._expect_total(self.received)
                self.progress.add_received(len(chunk))
            part_file.flush()
            os.fsync(part_file.fileno())

    def _finish(self, info: RemoteInfo) -> None:
        size = self.part.stat().st_size
        if info.size is not None and size < info.size:
            raise TransferError(f"got {size} of {info.size} bytes", retryable=True)
        if info.size is not None and size > info.size:
            self._discard(f"got {size} bytes, more than the server's {info.size}")
        if info.md5 is not None and file_md5(self.part) != info.md5:
            self._discard("MD5 does not match the server's ETag")
        # Without a size, the body ended as its transfer encoding says it ends (urllib3 raises
        # for a chunked body cut short); without an MD5 either, nothing more can be checked.
        self.verified = info.size is not None or info.md5 is not None
        os.replace(self.part, self.destination)
        fsync_directory(self.destination.parent)

    def _discard(self, reason: str) -> None:
        """Drops the .part (its bytes cannot be trusted) and asks for another attempt."""
        self.part.unlink(missing_ok=True)
        raise TransferError(reason, retryable=True)


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
