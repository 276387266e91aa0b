"""Bad data: skipped samples travel with the batch and are reported once per file.

A dataset that cannot load a sample (missing, truncated or corrupt member) loads another one in its
place and notes the skipped file in the sample's `"skipped"` string (one `path: reason` per line).
Strings survive DataLoader workers and the default collate, so the note reaches the main process
without any shared state; `BadDataReport` prints each bad file once and summarises per epoch.
Problems found while a dataset is built (archives missing, unreadable or lacking listed members)
are `ArchiveProblem`s, summarised once per archive before training starts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

SKIPPED_KEY = "skipped"


@dataclass(frozen=True)
class Problem:
    """One file (or zip member, written `archive.zip/member`) that could not be used, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class ArchiveProblem:
    """What construction found wrong with one archive, and how many of the listed frames it costs.

    `camera` is set when the whole archive is unusable (missing, unreadable, unknown naming): that
    camera's samples are all skipped. `frames_lost` 0 marks a note (members found under another
    folder and read from there).
    """

    archive: str
    reason: str
    frames_lost: int
    frames_listed: int
    camera: str | None = None

    def __str__(self) -> str:
        skipped = f"; camera {self.camera} skipped" if self.camera is not None else ""
        return f"{self.archive}: {self.reason} ({self.frames_lost} of {self.frames_listed} frames lost{skipped})"


def summarise_archive_problems(problems: Iterable[ArchiveProblem]) -> list[str]:
    """One line per archive and reason, in the order found; an archive that several datasets of
    the same capture inspected (training and held-out cameras) is listed once."""
    return list(dict.fromkeys(str(problem) for problem in problems))


def encode_problems(problems: list[Problem]) -> str:
    return "\n".join(str(problem) for problem in problems)


def decode_problems(text: str) -> list[Problem]:
    problems = []
    for line in text.splitlines():
        path, _, reason = line.partition(": ")
        problems.append(Problem(path, reason))
    return problems


def problems_in(batch: dict) -> list[Problem]:
    """The skipped files noted in a batch made by ava.data.collate.collate or by `default_collate`."""
    noted = batch.get(SKIPPED_KEY, [])
    if isinstance(noted, str):
        return decode_problems(noted)
    problems = []
    for item in noted:
        if isinstance(item, Problem):
            problems.append(item)
        elif isinstance(item, str):
            problems += decode_problems(item)
    return problems


@dataclass
class BadDataReport:
    """Counts skipped samples; prints every bad file once, and a summary at the end of each epoch."""

    console: object = None  # a rich Console; None prints to stderr
    seen: set[str] = field(default_factory=set)
    epoch_counts: Counter = field(default_factory=Counter)
    total: int = 0

    def _print(self, message: str) -> None:
        if self.console is None:
            from ava.console import make_console

            self.console = make_console()
        self.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def add(self, problems: list[Problem]) -> list[Problem]:
        """Records problems; prints and returns the ones never seen before."""
        new = []
        for problem in problems:
            self.epoch_counts[problem.path] += 1
            self.total += 1
            if problem.path not in self.seen:
                self.seen.add(problem.path)
                new.append(problem)
                self._print(f"skipping bad data: {problem}")
        return new

    def update(self, batch: dict) -> None:
        """Records the problems noted in a collated batch."""
        self.add(problems_in(batch))

    def end_epoch(self, epoch: int | None = None) -> int:
        """Prints one line for the epoch (when anything was skipped), resets its counts, returns the count."""
        skipped = sum(self.epoch_counts.values())
        if skipped:
            label = f"epoch {epoch}" if epoch is not None else "this epoch"
            self._print(
                f"{label}: {skipped} samples replaced because {len(self.epoch_counts)} files were bad "
                f"({len(self.seen)} bad files so far)"
            )
        self.epoch_counts = Counter()
        return skipped

