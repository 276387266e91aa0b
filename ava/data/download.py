"""`ava download`: fetch Ava-256 captures in parallel, resumably and verified (docs/data-layout.md).

`ava.data.release` says which files make up the release and where they live; `ava.data.http`
moves one file safely. This module ties them together: it checks the input, plans the file list
(fetching each capture's camera list for the per-camera groups), runs the transfers on a pool of
threads (the work waits on the network, not the CPU), shows progress and reports per asset group.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, TypeVar

from ava.data.http import (
    FileResult,
    Outcome,
    RemoteInfo,
    RetryPolicy,
    Stopped,
    TransferError,
    already_here,
    fetch_bytes,
    fetch_file,
    head,
    part_path,
    with_retries,
)
from ava.data.ids import CaptureId
from ava.data.release import (
    ALL_GROUPS,
    CALIBRATION_PATH,
    ENV_BASE_URL,
    EXTRA_GROUPS,
    RELEASE_WIDE,
    PlanFailure,
    PlannedFile,
    default_captures,
    group_paths,
    is_per_camera,
    parse_camera_ids,
    remote_root,
    resolve_base_url,
    select_captures,
    select_groups,
    check_output_dir,
)
from ava.errors import UserError

if TYPE_CHECKING:
    import requests
    from rich.console import Console

Item = TypeVar("Item")
Result = TypeVar("Result")


def parallel_map(
    function: Callable[[Item], Result], items: Iterable[Item], workers: int, stop: threading.Event
) -> Iterator[tuple[Item, Result]]:
    """Runs `function` over `items` on `workers` threads, yielding (item, result) as they finish.

    The threads are daemons and the main thread waits in short slices, so Ctrl-C reaches it at once;
    it then sets `stop`, gives the workers a moment to close their files, and re-raises. An
    exception in `function` (other than Stopped) is re-raised here.
    """
    pending: queue.Queue = queue.Queue()
    items = list(items)
    for item in items:
        pending.put(item)
    done: queue.Queue = queue.Queue()

    def work() -> None:
        while not stop.is_set():
            try:
                item = pending.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((item, function(item), None))
            except Stopped:
                return
            except BaseException as error:  # noqa: BLE001 - handed to the main thread
                done.put((item, None, error))
                return

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, min(workers, len(items))))]
    for thread in threads:
        thread.start()
    try:
        for _ in range(len(items)):
            while True:
                try:
                    item, result, error = done.get(timeout=0.1)
                    break
                except queue.Empty:
                    if not any(thread.is_alive() for thread in threads) and done.empty():
                        raise RuntimeError("download workers ended early") from None
            if error is not None:
                raise error
            yield item, result
    except BaseException:
        stop.set()
        for thread in threads:
            thread.join(timeout=2.0)
        raise


@dataclass
class GroupTally:
    """What happened to the files of one asset group."""

    downloaded: int = 0
    skipped: int = 0
    failed: int = 0
    received_bytes: int = 0
    expected_bytes: int = 0
    """Remote bytes of the group's available files (dry run)."""
    reasons: Counter = field(default_factory=Counter)
    first_failure: str | None = None
    unverified: int = 0
    """Downloaded files the server gave neither a size nor an MD5 for, accepted as they came."""
    first_unverified: str | None = None
    absent: int = 0
    """Failures that were 403/404: the server does not have the file."""
    lenient: bool = False
    """A group the server may lack (EXTRA_GROUPS, through `all`): if it lacks every file, that is
    one summary line and not a failure of the download."""

    def record(self, name: str, result: FileResult) -> None:
        self.received_bytes += result.received_bytes
        if result.outcome is Outcome.FAILED:
            self.fail(name, result.reason or "unknown error")
        elif result.outcome is Outcome.SKIPPED:
            self.skipped += 1
        else:
            self.downloaded += 1
            if not result.verified:
                self.unverified += 1
                self.first_unverified = self.first_unverified or name

    def fail(self, name: str, reason: str) -> None:
        self.failed += 1
        self.absent += reason.startswith(("403 ", "404 "))
        self.reasons[reason] += 1
        self.first_failure = self.first_failure or name

    @property
    def not_on_server(self) -> bool:
        """Every file of a lenient group was refused with 403/404: the server lacks the group."""
        return self.lenient and self.failed > 0 and self.absent == self.failed and not self.downloaded \
            and not self.skipped

    @property
    def failures(self) -> int:
        """Failed files that make the download fail (all but those of a group the server lacks)."""
        return 0 if self.not_on_server else self.failed

    def reason_text(self) -> str:
        if not self.reasons:
            return ""
        parts = [f"{reason} x{count}" for reason, count in self.reasons.most_common()]
        return f"{'; '.join(parts)} (e.g. {self.first_failure})"


class SessionPerThread:
    """One requests.Session per worker thread (a Session is not safe to share between threads)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []

    def get(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            from ava import __version__

            session = requests.Session()
            # Compressed transfer encodings would break Range offsets and the size check.
            session.headers.update({"Accept-Encoding": "identity", "User-Agent": f"ava/{__version__}"})
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()


def check_reachable(session: requests.Session, root: str, policy: RetryPolicy, stop: threading.Event) -> None:
    """Any HTTP answer from the remote root will do (S3 says 403 there); no answer is a UserError."""
    patient_enough = dataclasses.replace(policy, retries=min(policy.retries, 2))
    try:
        with_retries(lambda: session.head(root, timeout=policy.timeout).close(), patient_enough, stop)
    except TransferError as error:
        raise UserError(
            f"cannot reach {root} ({error.reason}); check --base-url / ${ENV_BASE_URL} and the network"
        ) from None


def plan_files(
    captures: Sequence[CaptureId],
    groups: Sequence[str],
    root: str,
    workers: int,
    sessions: SessionPerThread,
    policy: RetryPolicy,
    stop: threading.Event,
) -> tuple[list[PlannedFile], list[PlanFailure]]:
    """Every file of `groups` for every capture, in capture then group order, and the per-camera
    groups whose camera list could not be fetched."""
    cameras: dict[CaptureId, tuple[list[str], str | None]] = {}
    if any(is_per_camera(group) for group in groups):

        def cameras_of(capture: CaptureId) -> tuple[list[str], str | None]:
            url = PlannedFile(capture, "camera_calibration", CALIBRATION_PATH).url(root)
            try:
                return parse_camera_ids(fetch_bytes(sessions.get(), url, policy, stop)), None
            except TransferError as error:
                return [], f"camera list unavailable: {error.reason}"
            except ValueError as error:
                return [], f"camera list unavailable: {error}"

        cameras = dict(parallel_map(cameras_of, captures, workers, stop))
    files, failures = [], []
    planned: set[tuple[CaptureId, str]] = set()  # groups may share files (statistics is part of two)
    for capture in captures:
        camera_ids, camera_failure = cameras.get(capture, ([], None))
        for group in groups:
            if group in RELEASE_WIDE:
                continue
            if is_per_camera(group) and camera_failure:
                failures.append(PlanFailure(capture, group, camera_failure))
                continue
            for path in group_paths(group, camera_ids):
                if (capture, path) not in planned:
                    planned.add((capture, path))
                    files.append(PlannedFile(capture, group, path))
    for group in groups:
        if group in RELEASE_WIDE:
            files += [PlannedFile(None, group, path) for path in group_paths(group)]
    return files, failures


class TransferProgress:
    """rich progress for many transfers: bytes, speed, ETA, files done and failed.

    The byte total grows as servers announce sizes, so the ETA firms up as files start.
    """

    def __init__(self, console: Console, file_count: int) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._lock = threading.Lock()
        self._expected = 0
        self._file_count = file_count
        self._done = 0
        self._failed = 0
        self._progress = Progress(
            TextColumn("[bold]downloading"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[files]}"),
            console=console,
        )
        self._task = self._progress.add_task("download", total=None, files=self._files_text())

    def _files_text(self) -> str:
        return f"files {self._done}/{self._file_count}, {self._failed} failed"

    def add_expected(self, nbytes: int) -> None:
        with self._lock:
            self._expected += nbytes
            self._progress.update(self._task, total=self._expected)

    def add_received(self, nbytes: int) -> None:
        self._progress.update(self._task, advance=nbytes)

    def file_finished(self, outcome: Outcome) -> None:
        with self._lock:
            self._done += 1
            self._failed += outcome is Outcome.FAILED
            self._progress.update(self._task, files=self._files_text())

    def __enter__(self) -> "TransferProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._progress.stop()


def run_download(
    *,
    output_dir: Path,
    ids: Sequence[str] = (),
    captures_file: Path | None = None,
    count: int | None = None,
    assets: Sequence[str] = (ALL_GROUPS,),
    workers: int = 8,
    size: str = "4TB",
    base_url: str | None = None,
    dry_run: bool = False,
    policy: RetryPolicy = RetryPolicy(),
    console: Console | None = None,
) -> int:
    """Downloads (or, with `dry_run`, sizes up) the selected captures; returns the exit status:
    0 when every file is in place, 1 when any failed. Bad input raises UserError; Ctrl-C raises
    KeyboardInterrupt after the workers stopped, with `.part` files kept for the next run."""
    from ava.console import make_console

    console = console or make_console(stderr=False)
    selection = select_groups(assets, size)
    groups = selection.groups
    root = remote_root(resolve_base_url(base_url), size)
    if workers < 1:
        raise UserError(f"-j/--workers must be at least 1, got {workers}")
    output_dir = Path(output_dir)
    stop = threading.Event()
    sessions = SessionPerThread()
    try:
        if not dry_run:
            check_output_dir(output_dir)  # before anything waits on the network
        captures = select_captures(
            ids,
            captures_file,
            count,
            lambda: default_captures(lambda url: fetch_bytes(sessions.get(), url, policy, stop)),
        )
        check_reachable(sessions.get(), root, policy, stop)
        files, plan_failures = plan_files(captures, groups, root, workers, sessions, policy, stop)
        console.print(
            f"{len(captures)} captures, {len(files)} files ({', '.join(groups)}) from {root} to {output_dir}",
            highlight=False,
            soft_wrap=True,
        )
        for note in selection.notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
        lenient = {group for group in groups if group in EXTRA_GROUPS and group not in selection.named}
        job = _Job(root, output_dir, groups, workers, sessions, policy, stop, console, lenient)
        return job.dry_run(files, plan_failures) if dry_run else job.download(files, plan_failures)
    finally:
        sessions.close()


@dataclass
class _Job:
    root: str
    output_dir: Path
    groups: Sequence[str]
    workers: int
    sessions: SessionPerThread
    policy: RetryPolicy
    stop: threading.Event
    console: Console
    lenient: set[str] = field(default_factory=set)

    def download(self, files: list[PlannedFile], plan_failures: list[PlanFailure]) -> int:
        tallies = self._tallies(plan_failures)
        started = time.monotonic()
        with TransferProgress(self.console, len(files)) as progress:

            def fetch(planned: PlannedFile) -> FileResult:
                local = planned.local(self.output_dir)
                return fetch_file(self.sessions.get(), planned.url(self.root), local, self.policy, self.stop, progress)

            try:
                for planned, result in parallel_map(fetch, files, self.workers, self.stop):
                    tallies[planned.group].record(planned.name, result)
                    progress.file_finished(result.outcome)
            except KeyboardInterrupt:
                kept = sum(part_path(planned.local(self.output_dir)).exists() for planned in files)
                self.console.print(
                    f"stopped: {kept} partial files kept; run the same command again to resume", soft_wrap=True
                )
                raise
        self._report(tallies, time.monotonic() - started)
        return 1 if any(tally.failures for tally in tallies.values()) else 0

    def dry_run(self, files: list[PlannedFile], plan_failures: list[PlanFailure]) -> int:
        from rich.filesize import decimal

        def probe(planned: PlannedFile) -> tuple[RemoteInfo | None, str | None]:
            try:
                return head(self.sessions.get(), planned.url(self.root), self.policy, self.stop), None
            except TransferError as error:
                return None, error.reason

        probes = dict(parallel_map(probe, files, self.workers, self.stop))
        tallies = self._tallies(plan_failures)
        total = to_fetch = available = 0
        unknown = 0
        for planned in files:
            info, reason = probes[planned]
            tally = tallies[planned.group]
            if info is None:
                tally.fail(planned.name, reason)
                self.console.print(f"{'-':>10}  {planned.name}  (unavailable: {reason})", highlight=False, soft_wrap=True)
                continue
            local = planned.local(self.output_dir)
            present = local.is_file() and already_here(local, info)
            available += 1
            size = info.size or 0
            unknown += info.size is None
            total += size
            to_fetch += 0 if present else size
            tally.expected_bytes += size
            tally.skipped += present
            tally.downloaded += not present
            note = "  (already here)" if present else ""
            shown = decimal(size) if info.size is not None else "size ?"
            self.console.print(f"{shown:>10}  {planned.name}{note}", highlight=False, soft_wrap=True)
        self._report(tallies, None)
        self.console.print(
            f"dry run: {available} of {len(files)} files available, "
            f"{decimal(total)} in total, {decimal(to_fetch)} to fetch"
            + (f" (and {unknown} files whose size the server does not say)" if unknown else ""),
            highlight=False,
            soft_wrap=True,
        )
        return 1 if any(tally.failures for tally in tallies.values()) else 0

    def _tallies(self, plan_failures: list[PlanFailure]) -> dict[str, GroupTally]:
        tallies = {group: GroupTally(lenient=group in self.lenient) for group in self.groups}
        for failure in plan_failures:
            tallies[failure.group].fail(failure.name, failure.reason)
        return tallies

    def _report(self, tallies: dict[str, GroupTally], seconds: float | None) -> None:
        """The summary table, a line per group with failures, and the totals as one plain line."""
        from rich.filesize import decimal
        from rich.table import Table

        dry = seconds is None
        table = Table(title="dry run" if dry else "download summary")
        table.add_column("asset group")
        for heading in ("to fetch", "already here", "unavailable") if dry else ("downloaded", "skipped", "failed"):
            table.add_column(heading, justify="right")
        table.add_column("size" if dry else "received", justify="right")
        for group, tally in tallies.items():
            nbytes = tally.expected_bytes if dry else tally.received_bytes
            failed = "not on server" if tally.not_on_server else str(tally.failed)
            table.add_row(group, str(tally.downloaded), str(tally.skipped), failed, decimal(nbytes))
        self.console.print(table)
        for group, tally in tallies.items():
            if tally.not_on_server:
                self.console.print(
                    f"{group}: not on the server ({tally.reason_text()}); only the original's unmerged branches "
                    "describe this group, so the rest of the download is unaffected", highlight=False, soft_wrap=True
                )
            elif tally.failed:
                self.console.print(
                    f"{group}: {tally.failed} failed: {tally.reason_text()}", highlight=False, soft_wrap=True
                )
            if tally.unverified:
                self.console.print(
                    f"{group}: {tally.unverified} accepted unverified: the server sent neither their size "
                    f"(Content-Length) nor an MD5 (ETag) (e.g. {tally.first_unverified})", highlight=False,
                    soft_wrap=True,
                )
        if dry:
            return
        downloaded = sum(tally.downloaded for tally in tallies.values())
        skipped = sum(tally.skipped for tally in tallies.values())
        failed = sum(tally.failures for tally in tallies.values())
        unverified = sum(tally.unverified for tally in tallies.values())
        absent = [group for group, tally in tallies.items() if tally.not_on_server]
        received = sum(tally.received_bytes for tally in tallies.values())
        speed = decimal(int(received / seconds)) if seconds > 0 else "-"
        self.console.print(
            f"downloaded {downloaded}, skipped {skipped}, failed {failed} files"
            + (f" ({unverified} of the downloaded unverified)" if unverified else "")
            + f"; received {decimal(received)} in {seconds:.1f} s ({speed}/s)"
            + (f"; not on the server: {', '.join(absent)}" if absent else ""),
            highlight=False,
            soft_wrap=True,
        )
        if failed:
            self.console.print(
                "failed files are not in place; run the same command again to retry them", soft_wrap=True
            )
