"""Training data: the per-epoch sampler across ranks, empty loaders, camera selection and what
`ava train` says about the data it really uses."""

from __future__ import annotations

import math
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from ava.data.ids import read_ids_csv
from ava.data.layout import CaptureLayout
from ava.errors import UserError
from ava.train.data import (
    EpochSampler,
    build_training_data,
    capture_cameras,
    ids_csv_path,
    nonempty_batches,
    select_cameras,
)


def _rank_orders(length: int, world_size: int, seed: int, epoch: int, start: int = 0) -> list[list[int]]:
    orders = []
    for rank in range(world_size):
        sampler = EpochSampler(length, rank, world_size, seed)
        sampler.set_epoch(epoch, start)
        order = list(sampler)
        assert len(order) == len(sampler)
        orders.append(order)
    return orders


@given(st.integers(0, 60), st.integers(1, 9), st.integers(0, 3), st.integers(0, 5), st.integers(0, 4))
def test_every_rank_gets_the_same_number_of_samples(length, world_size, seed, epoch, start):
    orders = _rank_orders(length, world_size, seed, epoch)
    per_rank = math.ceil(length / world_size)
    assert [len(order) for order in orders] == [per_rank] * world_size
    assert set().union(*orders) == set(range(length))  # every sample is used each epoch
    assert all(0 <= index < length for order in orders for index in order)
    # Each sample appears at most ceil(total / length) times over all ranks (repeats only fill the gap).
    counts = torch.bincount(torch.tensor([i for order in orders for i in order], dtype=torch.long), minlength=length)
    if length:
        assert int(counts.max()) - int(counts.min()) <= 1
    # A resumed epoch continues exactly where the unbroken one was.
    assert _rank_orders(length, world_size, seed, epoch, start) == [order[start:] for order in orders]


@pytest.mark.parametrize("length, world_size", [(1, 3), (2, 5), (3, 8), (7, 2)])
def test_small_datasets_fill_every_rank(length, world_size):
    orders = _rank_orders(length, world_size, seed=0, epoch=0)
    assert {len(order) for order in orders} == {math.ceil(length / world_size)}


def test_sampler_refuses_impossible_ranks():
    with pytest.raises(ValueError):
        EpochSampler(4, 2, 2, 0)
    with pytest.raises(ValueError):
        EpochSampler(-1, 0, 1, 0)


def test_a_named_ids_csv_that_is_missing_is_an_error_not_swapped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ids.csv").write_text("mcd,sid,mct\n")  # a synthetic set's list
    # The presets' names fall back to each other: ava256 reads a synthetic set, demo a release.
    assert ids_csv_path(tmp_path, "256_ids.csv") == tmp_path / "ids.csv"
    (tmp_path / "ids.csv").rename(tmp_path / "256_ids.csv")
    assert ids_csv_path(tmp_path, "ids.csv") == tmp_path / "256_ids.csv"
    (tmp_path / "256_ids.csv").rename(tmp_path / "ids.csv")
    # A file the user named is used or refused, never replaced by the dataset's list.
    (tmp_path / "mine.csv").write_text("mcd,sid,mct\n")
    assert ids_csv_path(tmp_path, "mine.csv") == tmp_path / "mine.csv"
    for named in ("nope.csv", str(tmp_path / "elsewhere" / "ids.csv")):
        with pytest.raises(UserError, match="not found"):
            ids_csv_path(tmp_path, named)


def test_an_empty_loader_raises_instead_of_spinning():
    sampler = EpochSampler(0, 0, 1, seed=0)
    loader = DataLoader(list(range(5)), sampler=sampler, batch_size=2, drop_last=True)
    with pytest.raises(UserError, match=r"produced no batch \(rank 0 of 1, 0 samples, batches of 2\)"):
        for _ in nonempty_batches(loader):
            pass
    sampler = EpochSampler(5, 0, 1, seed=0)
    sampler.set_epoch(0, start=4)  # one sample left: no full batch
    with pytest.raises(UserError, match="produced no batch"):
        list(nonempty_batches(DataLoader(list(range(5)), sampler=sampler, batch_size=2, drop_last=True)))
    sampler.set_epoch(1)
    batches = nonempty_batches(DataLoader(list(range(5)), sampler=sampler, batch_size=2, drop_last=True))
    for _ in batches:
        break  # leaving early is not an empty loader
    batches.close()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    from ava.synth import SynthConfig, generate

    # 4 cameras: the dome's four frontal ones, which every synthetic capture has.
    out = tmp_path_factory.mktemp("captures")
    generate(out, SynthConfig(n_ids=2, n_frames=4, n_cams=4, downsample=64, texture_size=32, prims_per_side=8,
                              voxels=4, mesh_columns=16, mesh_rows=12, workers=1, keypoints=False), progress=False)
    return out


@pytest.fixture
def dataset_dir(pristine, tmp_path) -> Path:
    shutil.copytree(pristine, tmp_path / "set")
    return tmp_path / "set"


def test_camera_selection_checks_its_ids(pristine):
    captures = read_ids_csv(pristine / "ids.csv")
    per_capture = capture_cameras(pristine, captures)
    assert per_capture[0] == per_capture[1] and len(per_capture[0]) == 4  # synthetic captures share their ids
    assert select_cameras(per_capture, (), captures) == per_capture
    a, b, c, d = per_capture[0]
    assert select_cameras(per_capture, [d, a], captures) == [[a, d], [a, d]]  # each capture's own order
    with pytest.raises(UserError, match=r"--train.cameras \['123456'\] are in no selected capture"):
        select_cameras(per_capture, [a, "123456"], captures)
    # Real captures may differ: a selection can leave one of them without a camera.
    assert select_cameras([[a, b], [b, c]], [a, c], captures) == [[a], [c]]
    with pytest.raises(UserError, match=f"leaves capture {captures[1].folder} without a camera"):
        select_cameras([[a, b], [c, d]], [a, b], captures)


def test_training_data_reports_skipped_cameras_and_what_it_trains_on(dataset_dir):
    captures = read_ids_csv(dataset_dir / "ids.csv")
    per_capture = capture_cameras(dataset_dir, captures)
    a, b, c, d = per_capture[0]
    first, second = (CaptureLayout(dataset_dir / capture.folder) for capture in captures)
    truncated = first.image_zip(a)  # camera a is lost in the first capture only
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size * 2 // 3])
    missing = [first.image_zip(d), second.image_zip(d)]  # camera d has no data anywhere
    for path in missing:
        path.unlink()
    renamed = second.image_zip(b)  # readable, members under another folder
    with zipfile.ZipFile(renamed) as archive:
        members = [(name, archive.read(name)) for name in archive.namelist()]
    with zipfile.ZipFile(renamed, "w") as archive:
        for name, data in members:
            archive.writestr(f"extra/{name}", data)
    data = build_training_data(dataset_dir, captures, 64, holdout=[d], holdout_count=0, progress=False)
    lines = data.describe()
    assert lines[0] == "warning: what reading the captures found (4 archives):"
    assert lines[1].startswith(f"  {truncated}: archive cannot be opened") and lines[1].endswith(
        f"(4 of 4 frames lost; camera {a} skipped)")
    assert lines[2].startswith(f"  {renamed}: members are named 'extra/cam") and "(0 of 4 frames lost)" in lines[2]
    assert lines[3] == f"  {missing[0]}: archive is missing (4 of 4 frames lost; camera {d} skipped)"
    assert lines[4] == f"  {missing[1]}: archive is missing (4 of 4 frames lost; camera {d} skipped)"
    assert "--train.cameras" in lines[5]
    assert lines[6] == ("data: 2 captures, 20 training samples at 41x64 (WxH); training on 3 of 4 cameras, 0 held out "
                        f"(none usable), 1 without usable data ({d})")
    assert data.holdout is None and len(data.train) == 4 * 2 + 4 * 3
    # Pictures are taken from cameras that have samples.
    from ava.runtime.cameras import frontal_cameras

    chosen = frontal_cameras(data.train.datasets)
    assert sorted(chosen) == [a, b, c] and d not in chosen
    # Leaving the damaged cameras out on purpose: only the note about the renamed folder is left.
    data = build_training_data(dataset_dir, captures, 64, holdout=(), holdout_count=2, progress=False, cameras=[b, c])
    assert data.cameras == [b, c]
    lines = data.describe()
    assert lines[0] == "warning: what reading the captures found (1 archive):" and lines[1].startswith(f"  {renamed}")
    assert len(lines) == 3 and lines[2].startswith("data: 2 captures, ")
    assert lines[2].endswith(f"training on 1 of 2 cameras, 1 held out ({data.holdout_cameras[0]})")
