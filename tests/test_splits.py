"""ava.data.splits: the deterministic subject split of docs/evaluation.md."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ava.data.splits import SubjectSplit, split_subjects, subject_of
from ava.errors import UserError

SIDS = st.from_regex(r"[A-Z]{3}[0-9]{3}", fullmatch=True)


def _folders(sids: list[str]) -> list[str]:
    return [f"20260101--{1000 + index:04d}--{sid}" for index, sid in enumerate(sids)]


@given(st.lists(SIDS, min_size=3, max_size=30, unique=True), st.integers(0, 3), st.integers(0, 3),
       st.integers(0, 10), st.randoms())
def test_split_is_a_partition_by_subject_independent_of_order(sids, validation, test, seed, random):
    folders = _folders(sids)
    if validation + test >= len(sids):
        with pytest.raises(UserError, match="leaves none to train on"):
            split_subjects(folders, validation, test, seed)
        return
    split = split_subjects(folders, validation, test, seed)
    assert (len(split.validation), len(split.test)) == (validation, test)
    assert sorted(split.train + split.validation + split.test) == sorted(folders)
    assert split.held_out == split.validation + split.test and split.seed == seed
    for role in ("train", "validation", "test"):  # each role keeps the given order
        kept = getattr(split, role)
        assert list(kept) == [folder for folder in folders if folder in kept]
    shuffled = list(folders)
    random.shuffle(shuffled)
    again = split_subjects(shuffled, validation, test, seed)
    assert {role: set(getattr(again, role)) for role in ("train", "validation", "test")} == \
           {role: set(getattr(split, role)) for role in ("train", "validation", "test")}
    assert SubjectSplit.from_dict(split.to_dict()) == split


@given(st.lists(SIDS, min_size=6, max_size=20, unique=True), SIDS)
def test_a_new_subject_moves_others_at_most_one_role_down(sids, new):
    if new in sids:
        return
    before = split_subjects(_folders(sids), 2, 2, seed=1)
    after = split_subjects(_folders(sids) + [f"20260102--0900--{new}"], 2, 2, seed=1)
    changed = [(before.role(folder), after.role(folder)) for folder in _folders(sids)
               if before.role(folder) != after.role(folder)]
    assert sorted(changed) == sorted(set(changed)) and set(changed) <= {("test", "validation"), ("validation", "train")}
    if after.role(f"20260102--0900--{new}") == "train":
        assert not changed


def test_every_capture_of_a_subject_lands_on_one_side():
    folders = [f"2026010{day}--0900--{sid}" for sid in ("AAA001", "BBB002", "CCC003", "DDD004", "EEE005")
               for day in (1, 2)]
    for seed in range(8):
        split = split_subjects(folders, 1, 1, seed)
        assert len(split.test) == len(split.validation) == 2
        for role in ("train", "validation", "test"):
            for folder in getattr(split, role):
                assert {split.role(other) for other in folders if subject_of(other) == subject_of(folder)} == {role}


def test_seeds_give_different_splits_and_bad_counts_are_refused():
    folders = _folders([f"SUB{index:03d}" for index in range(20)])
    assert len({split_subjects(folders, 2, 2, seed).test for seed in range(6)}) > 1
    assert split_subjects(folders, 2, 2, 3) == split_subjects(folders, 2, 2, 3)
    with pytest.raises(UserError, match="cannot be negative"):
        split_subjects(folders, -1, 2)
