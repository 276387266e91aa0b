"""Training data: which dataset and captures, held-out cameras, datasets and a resumable loader.

Index conventions (DESIGN.md): `camindex` is the position of a camera in the sorted list of ALL
cameras of the selected captures, held-out ones included, so that the checkpoint's camera list
covers every camera a render may ask for; `idindex` is the capture's position in the training list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from ava.data.calibration import read_calibration
from ava.data.dataset import CaptureDataset, MultiCaptureDataset
from ava.data.ids import CaptureId
from ava.data.layout import CaptureLayout
from ava.synth.config import IDS_FILENAME
from ava.errors import UserError

def ids_csv_path(dataset_dir: Path, data_csv: str) -> Path:
    """The ids CSV: absolute, else in the dataset folder, else relative to the working directory;
    a synthetic set's own ids.csv when the named file is absent."""
    named = Path(data_csv).expanduser()
    candidates = [named] if named.is_absolute() else [dataset_dir / named, named]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if (dataset_dir / IDS_FILENAME).is_file():
        return dataset_dir / IDS_FILENAME
    raise UserError(
        f"ids CSV {data_csv} not found in {dataset_dir} or the working directory; pass --train.data-csv PATH"
    )


def select_captures(listed: Sequence[CaptureId], ids: Sequence[str], nids: int, source: str) -> list[CaptureId]:
    """`ids` (capture ids or subject ids, looked up in `listed`) if given, else the first `nids` rows."""
    if ids:
        by_folder = {capture.folder: capture for capture in listed}
        by_sid: dict[str, list[CaptureId]] = {}
        for capture in listed:
            by_sid.setdefault(capture.sid, []).append(capture)
        chosen, unknown = [], []
        for text in ids:
            if text in by_folder:
                chosen.append(by_folder[text])
            elif len(by_sid.get(text, [])) == 1:
                chosen.append(by_sid[text][0])
            elif text in by_sid:
                raise UserError(f"subject {text} has several captures in {source}; name one as MCD--MCT--SID")
            else:
                unknown.append(text)
        if unknown:
            known = ", ".join(capture.folder for capture in listed[:4])
            raise UserError(f"unknown capture ids {unknown} (not in {source}, which lists e.g. {known})")
        if len(set(chosen)) != len(chosen):
            raise UserError("--train.ids names a capture twice")
        return chosen
    if nids < 1:
        raise UserError(f"--train.nids must be at least 1, got {nids}")
    if nids > len(listed):
        raise UserError(f"--train.nids is {nids} but {source} lists only {len(listed)} captures")
    return list(listed[:nids])


def capture_cameras(dataset_dir: Path, captures: Sequence[CaptureId]) -> list[list[str]]:
    """Camera ids of each capture, from its calibration (no zips opened)."""
    cameras = []
    for capture in captures:
        layout = CaptureLayout(dataset_dir / capture.folder)
        if not layout.calibration.is_file():
            raise UserError(
                f"{layout.calibration} does not exist; is {dataset_dir} the dataset folder and "
                f"{capture.folder} downloaded (ava download)?"
            )
        cameras.append([camera.camera_id for camera in read_calibration(layout.calibration)])
    return cameras


def choose_holdout_cameras(per_capture: list[list[str]], explicit: Sequence[str], count: int) -> list[str]:
    """The held-out camera ids: `explicit`, else `count` picked round-robin over the captures
    (each time the middle one, in id order, of the capture's cameras not yet chosen)."""
    every = {camera for cameras in per_capture for camera in cameras}
    if explicit:
        unknown = sorted(set(explicit) - every)
        if unknown:
            raise UserError(f"held-out cameras {unknown} are in none of the selected captures")
        chosen = list(dict.fromkeys(explicit))
    else:
        chosen = []
        for turn in range(max(count, 0)):
            cameras = per_capture[turn % len(per_capture)]
            left = sorted(set(cameras) - set(chosen))
            if len(left) > 1:
                chosen.append(left[len(left) // 2])
    for cameras in per_capture:
        if not set(cameras) - set(chosen):
            raise UserError(
                f"holding out {len(chosen)} cameras leaves a capture without a training camera; hold out fewer"
            )
    return sorted(chosen)


@dataclass
class TrainingData:
    """Everything the loop needs to know about its data."""

    dataset_dir: Path
    captures: list[CaptureId]
    cameras: list[str]  # every camera (training and held out), sorted: the camindex order
    holdout_cameras: list[str]
    train: MultiCaptureDataset
    holdout: ConcatDataset | None  # samples of the held-out cameras, same indices and statistics

    @property
    def stats(self):
        return self.train.stats


def build_training_data(dataset_dir: Path, captures: list[CaptureId], downsample: int,
                        holdout: Sequence[str], holdout_count: int, progress: bool) -> TrainingData:
    per_capture = capture_cameras(dataset_dir, captures)
    holdout_cameras = choose_holdout_cameras(per_capture, holdout, holdout_count)
    all_cameras = sorted({camera for cameras in per_capture for camera in cameras})
    training_cameras = [camera for camera in all_cameras if camera not in set(holdout_cameras)]
    train = MultiCaptureDataset(dataset_dir, captures, downsample, cameras=training_cameras, progress=progress)
    _use_camera_order(train.datasets, all_cameras)
    train.camera_ids = all_cameras
    holdout_parts = []
    for identity, (capture, cameras) in enumerate(zip(captures, per_capture)):
        mine = [camera for camera in cameras if camera in set(holdout_cameras)]
        if not mine:
            continue
        part = CaptureDataset(dataset_dir / capture.folder, downsample, cameras=mine, stats=train.stats)
        part.identity_index = identity
        holdout_parts.append(part)
    _use_camera_order(holdout_parts, all_cameras)
    return TrainingData(
        dataset_dir=dataset_dir,
        captures=list(captures),
        cameras=all_cameras,
        holdout_cameras=holdout_cameras,
        train=train,
        holdout=ConcatDataset(holdout_parts) if holdout_parts else None,
    )


def _use_camera_order(parts: Sequence[CaptureDataset], cameras: list[str]) -> None:
    # CaptureDataset maps a camera to its position in `camera_ids` (sorted); giving every part the
    # full list makes held-out and training samples agree on camindex.
    for part in parts:
        part.camera_ids = cameras


class EpochSampler(Sampler[int]):
    """A shuffled order per epoch, drawn from (seed, epoch) and split across ranks like
    DistributedSampler (padded by repetition so every rank gets the same count), that can start
    part-way into an epoch: exactly where a resumed run left off."""

    def __init__(self, length: int, rank: int, world_size: int, seed: int) -> None:
        self.length = length
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.per_rank = math.ceil(length / world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use epoch `epoch`'s order, skipping its first `start` samples of this rank."""
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        order += order[: self.per_rank * self.world_size - self.length]
        mine = order[self.rank :: self.world_size]
        return iter(mine[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


def make_loader(dataset, sampler: EpochSampler, batchsize: int, num_workers: int, pin_memory: bool) -> DataLoader:
    from ava.data.bad_data import collate_samples
    from ava.train.interrupt import ignore_stop_signals

    return DataLoader(
        dataset,
        batch_size=batchsize,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_samples,
        drop_last=True,
        pin_memory=pin_memory,
        persistent_workers=False,
        worker_init_fn=ignore_stop_signals,
        # Its own generator: a DataLoader otherwise draws worker seeds from the global RNG each
        # epoch, which would make the latent noise after a resume differ from an unbroken run.
        generator=torch.Generator().manual_seed(sampler.seed),
    )
