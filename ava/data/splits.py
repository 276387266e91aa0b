"""Subjects split into train, validation and test (docs/evaluation.md, "Subjects").

A universal model is measured on people it never saw. The split is by *subject*: every capture of
a subject lands on the same side, so no face leaks from training into evaluation. It is
deterministic: each subject id is ranked by the SHA-256 of `"<seed>:<sid>"`, the first `test`
subjects of that ranking are the test subjects, the next `validation` the validation subjects,
and the rest train. The ranking does not depend on the order or the length of the list: adding a
capture changes the split only when its subject ranks among the first `test + validation`, and
then each subject that changes role moves one role down (test to validation, validation to train),
at most one per role. Both `ava train` (`--train.num-holdout-subjects`)
and the headset driver use this function, so that one seed gives one split everywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from ava.errors import UserError

ROLES = ("train", "validation", "test")


def subject_of(capture: str) -> str:
    """The subject id of a capture folder `MCD--MCT--SID` (or of a bare subject id)."""
    return str(capture).rsplit("--", 1)[-1]


def subject_rank(sid: str, seed: int) -> str:
    """The key subjects are ordered by: the hex SHA-256 of `"<seed>:<sid>"`."""
    return hashlib.sha256(f"{seed}:{sid}".encode()).hexdigest()


@dataclass(frozen=True)
class SubjectSplit:
    """Capture folders per role, each in the order they were given. `seed` is the split's seed,
    None when the roles were named by hand."""

    train: tuple[str, ...]
    validation: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def held_out(self) -> tuple[str, ...]:
        """Validation and test captures: the subjects training never sees."""
        return self.validation + self.test

    def role(self, capture: str) -> str | None:
        """"train", "validation", "test", or None for a capture the split does not list."""
        for role in ROLES:
            if capture in getattr(self, role):
                return role
        return None

    def to_dict(self) -> dict:
        """JSON-ready {"train": [...], "validation": [...], "test": [...], "seed": int | None}."""
        return {"train": list(self.train), "validation": list(self.validation), "test": list(self.test),
                "seed": self.seed}

    @classmethod
    def from_dict(cls, document: dict) -> "SubjectSplit":
        return cls(*(tuple(document.get(role, ())) for role in ROLES), seed=document.get("seed"))


def split_subjects(captures: Sequence[str], validation: int, test: int, seed: int = 0) -> SubjectSplit:
    """Splits capture folders (`MCD--MCT--SID`) by subject into train, validation and test.

    validation, test: numbers of *subjects* (a subject with several captures takes all of them
    along). At least one subject must be left to train on. Raises UserError otherwise.
    """
    if validation < 0 or test < 0:
        raise UserError(f"the numbers of validation and test subjects cannot be negative, got {validation} and {test}")
    captures = list(dict.fromkeys(str(capture) for capture in captures))
    subjects = sorted({subject_of(capture) for capture in captures}, key=lambda sid: subject_rank(sid, seed))
    if validation + test >= len(subjects):
        raise UserError(f"holding out {validation + test} of {len(subjects)} subjects leaves none to train on; "
                        "hold out fewer or add captures")
    tested, validated = set(subjects[:test]), set(subjects[test:test + validation])
    role_of = {capture: "test" if subject_of(capture) in tested else
               "validation" if subject_of(capture) in validated else "train" for capture in captures}
    return SubjectSplit(*(tuple(capture for capture in captures if role_of[capture] == role) for role in ROLES),
                        seed=seed)
