"""Capture identifiers and the ids CSV (`256_ids.csv`).

A capture is the triple (mcd, mct, sid): capture date YYYYMMDD, time HHMM (leading zeros matter)
and subject id (three upper-case letters, three digits). All three stay strings. On disk and on the
server a capture's folder is `{mcd}--{mct}--{sid}`. The CSV's header is `mcd,sid,mct` (that column
order), one row per subject.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ava.data.formats import csv_rows
from ava.errors import UserError
from ava.files import read_text

_MCD = re.compile(r"^\d{8}$")
_MCT = re.compile(r"^\d{4}$")
_SID = re.compile(r"^[A-Z]{3}\d{3}$")
_FOLDER = re.compile(r"^(\d{8})--(\d{4})--([A-Z]{3}\d{3})$")

CSV_HEADER = ("mcd", "sid", "mct")


@dataclass(frozen=True, order=True)
class CaptureId:
    """One capture: date `mcd`, time `mct` and subject `sid`, all strings."""

    mcd: str
    mct: str
    sid: str

    def __post_init__(self) -> None:
        problems = []
        if not _MCD.match(self.mcd):
            problems.append(f"mcd {self.mcd!r} is not an 8-digit date YYYYMMDD")
        if not _MCT.match(self.mct):
            problems.append(f"mct {self.mct!r} is not a 4-digit time HHMM")
        if not _SID.match(self.sid):
            problems.append(f"sid {self.sid!r} is not three upper-case letters and three digits")
        if problems:
            raise UserError("bad capture id: " + "; ".join(problems))

    @property
    def folder(self) -> str:
        """The capture's folder name, e.g. `20230324--0820--AEY864`."""
        return f"{self.mcd}--{self.mct}--{self.sid}"

    def __str__(self) -> str:
        return self.folder

    @classmethod
    def parse(cls, text: str) -> "CaptureId":
        """Parses a folder name `{mcd}--{mct}--{sid}`."""
        match = _FOLDER.match(text.strip())
        if not match:
            raise UserError(
                f"{text!r} is not a capture id; expected MCD--MCT--SID such as 20230324--0820--AEY864"
            )
        return cls(mcd=match.group(1), mct=match.group(2), sid=match.group(3))


def is_subject_id(text: str) -> bool:
    """Whether `text` is a subject id: three upper-case letters and three digits (AEY864)."""
    return bool(_SID.match(text))


def parse_ids_csv(text: str, source: str = "ids CSV") -> list[CaptureId]:
    """Parses the text of an ids CSV (header `mcd,sid,mct`), keeping the row order."""
    rows = csv_rows(text, source)
    if not rows:
        raise UserError(f"{source} is empty; expected a header `mcd,sid,mct` and one row per capture")
    header = tuple(cell.strip() for cell in rows[0])
    if set(header) != set(CSV_HEADER) or len(header) != 3:
        raise UserError(f"{source} has header {','.join(header)!r}; expected 'mcd,sid,mct'")
    column = {name: header.index(name) for name in CSV_HEADER}
    captures = []
    for line_number, row in enumerate(rows[1:], start=2):
        if len(row) != 3:
            raise UserError(f"{source} line {line_number}: expected 3 fields, got {len(row)}")
        try:
            captures.append(
                CaptureId(
                    mcd=row[column["mcd"]].strip(),
                    mct=row[column["mct"]].strip(),
                    sid=row[column["sid"]].strip(),
                )
            )
        except UserError as error:
            raise UserError(f"{source} line {line_number}: {error}") from None
    return captures


def read_ids_csv(path: str | Path) -> list[CaptureId]:
    """Reads an ids CSV file; see `parse_ids_csv`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ids CSV {path} does not exist; pass a file with header mcd,sid,mct")
    return parse_ids_csv(read_text(path), source=str(path))


def format_ids_csv(captures: list[CaptureId]) -> str:
    """The CSV text for a list of captures, in the original's column order."""
    lines = [",".join(CSV_HEADER)]
    lines += [f"{c.mcd},{c.sid},{c.mct}" for c in captures]
    return "\n".join(lines) + "\n"
