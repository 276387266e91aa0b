"""The driver's data: subjects, their dome frames' expression codes, their headset frames, and the
frame-to-frame targets that alignment keeps changing.

Nothing here reads the synthetic ground truth (`encoder_truth.json`): the supervision uses only
what the real release has, the subject and segment names of the two sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ava.data.headset_capture import HeadsetDataset
from ava.errors import UserError
from ava.runtime.driving import dome_view, headset_subjects, resolve_subjects


def split_subjects(dataset_dir: Path, ids: Sequence[str], holdout: Sequence[str], count: int) -> tuple[list[str], list[str]]:
    """(training subjects, held-out subjects), both capture folders in folder order."""
    available = headset_subjects(dataset_dir, required=True)
    pool = resolve_subjects(ids, available, dataset_dir) if ids else available
    if holdout:
        held = resolve_subjects(holdout, available, dataset_dir)
    else:
        if count < 0:
            raise UserError("--train.num-holdout-subjects cannot be negative")
        held = pool[len(pool) - count :] if count else []
    training = [folder for folder in pool if folder not in held]
    if not training:
        raise UserError(f"holding out {len(held)} of {len(pool)} subjects leaves none to train on; hold out fewer")
    return training, held


@dataclass
class Subject:
    """One subject's two sessions, as the driver sees them."""

    folder: str
    headset: HeadsetDataset
    dome: object  # one-camera CaptureDataset read as the decoder expects (ava.runtime.driving.dome_view)
    camera: str
    codes: torch.Tensor  # [F,16,4,4]: the decoder's expression code of every dome sample
    dome_segments: dict[str, list[int]]  # segment -> dome sample indices in recording order
    headset_segments: dict[str, list[int]]  # segment -> headset frame indices in recording order
    identity: int | None  # the decoder's idindex, None for a capture it was not trained on
    shared: list[str] = field(default_factory=list)  # segments in both sessions, in headset order
    neutral: int = 0  # headset frame index of the neutral frame a conditioned encoder reads

    def neutral_views(self) -> torch.Tensor:
        """uint8 [5,S,S]: the subject's neutral headset frame (ava.data.headset_capture.HeadsetDataset.neutral_frame)."""
        return self.headset.views(self.neutral)


@torch.no_grad()
def dome_codes(model, part, device: torch.device, batch: int = 16) -> torch.Tensor:
    """[F,16,4,4] expression codes (expr_mu) of every sample of a one-camera dome part."""
    from ava.data.collate import collate
    from ava.runtime.batch import to_device
    from ava.runtime.model import encode_expression

    codes = []
    for start in range(0, len(part), batch):
        samples = [part[index] for index in range(start, min(start + batch, len(part)))]
        codes.append(encode_expression(model, to_device(collate(samples), device)).cpu())
    return torch.cat(codes)


# Subjects already loaded in this process, when a caller that trains and evaluates several drivers
# in one process (tools/driver_protocol.py) turns it on with `keep_subjects`: loading a subject
# (its dome codes, its decoded headset frames) costs more than a small driver's training.
_KEPT: dict | None = None


def keep_subjects(enabled: bool = True) -> None:
    """Reuse subjects loaded with the same dataset, decoder file, sizes and camera in this process."""
    global _KEPT
    _KEPT = {} if enabled else None


def load_subject(dataset_dir: Path, folder: str, decoder, model, downsample: int, image_size: int,
                 device: torch.device, camera: str | None = None) -> Subject:
    """A subject's headset frames (at image_size^2) and dome frames (one camera: `camera`, else the
    most frontal one) with the decoder's expression code of every dome frame."""
    if _KEPT is None:
        return _load_subject(dataset_dir, folder, decoder, model, downsample, image_size, device, camera)
    path = Path(decoder.path)
    key = (str(Path(dataset_dir).resolve()), folder, str(path.resolve()), path.stat().st_mtime_ns, downsample,
           image_size, camera)
    if key not in _KEPT:
        _KEPT[key] = _load_subject(dataset_dir, folder, decoder, model, downsample, image_size, device, camera)
    return _KEPT[key]


def _load_subject(dataset_dir: Path, folder: str, decoder, model, downsample: int, image_size: int,
                  device: torch.device, camera: str | None) -> Subject:
    identities = list(decoder.identities)
    identity = identities.index(folder) if folder in identities else None
    headset = HeadsetDataset(Path(dataset_dir) / folder, size=image_size)
    dome, camera = dome_view(dataset_dir, folder, downsample, decoder, camera=camera, identity=identity)
    codes = dome_codes(model, dome, device)
    segment_of = {frame.frame_id: frame.segment for frame in dome.reader.frames}
    dome_segments: dict[str, list[int]] = {}
    for index in range(len(dome)):
        dome_segments.setdefault(segment_of[dome.sample_ids(index)[0]], []).append(index)
    headset_segments = headset.segments()
    shared = [segment for segment in headset_segments if segment in dome_segments]
    if not shared:
        raise UserError(f"{folder}: its headset and dome sessions share no segment name "
                        f"(headset: {', '.join(list(headset_segments)[:3])}; dome: {', '.join(list(dome_segments)[:3])})")
    neutral = headset.neutral_frame()
    # Without a neutral segment, the session's first frame (a recording usually starts at rest).
    return Subject(folder, headset, dome, camera, codes, dome_segments, headset_segments, identity, shared,
                   0 if neutral is None else neutral)


class FramePool(Dataset):
    """Every headset frame of some subjects that lies in a shared segment, as one indexable pool.

    Item: (views uint8 [5,S,S], pool index). `targets` [N] holds each frame's current target as an
    index into `codes`: all subjects' dome codes, concatenated (the first `dome_count` rows), to
    which an oracle run appends each frame's true code (`add_fixed_targets`). `subject_of` [N]
    gives each frame's subject number.
    """

    def __init__(self, subjects: list[Subject]) -> None:
        self.subjects = subjects
        self.entries: list[tuple[int, int]] = []  # (subject, headset frame index)
        self.segments: list[tuple[int, str, np.ndarray, np.ndarray]] = []  # (subject, segment, pool ids, code ids)
        offsets = np.cumsum([0] + [len(subject.codes) for subject in subjects])
        for number, subject in enumerate(subjects):
            for segment in subject.shared:
                frames = subject.headset_segments[segment]
                pool_ids = np.arange(len(self.entries), len(self.entries) + len(frames))
                self.entries += [(number, frame) for frame in frames]
                code_ids = offsets[number] + np.array(subject.dome_segments[segment])
                self.segments.append((number, segment, pool_ids, code_ids))
        self.codes = torch.cat([subject.codes for subject in subjects]) if subjects else torch.zeros(0, 16, 4, 4)
        self.dome_count = len(self.codes)
        self.targets = torch.full((len(self.entries),), -1, dtype=torch.long)
        self.subject_of = torch.tensor([number for number, _ in self.entries], dtype=torch.long)
        self._neutral: torch.Tensor | None = None

    def neutral_views(self) -> torch.Tensor:
        """uint8 [subjects,5,S,S]: every subject's neutral headset frame (index with `subject_of`)."""
        if self._neutral is None:
            self._neutral = (torch.stack([subject.neutral_views() for subject in self.subjects]) if self.subjects
                             else torch.zeros(0, 5, 1, 1, dtype=torch.uint8))
        return self._neutral

    def add_fixed_targets(self, codes: torch.Tensor) -> None:
        """Makes codes [N,16,4,4] (one per frame, pool order) the frames' targets (an oracle run)."""
        if len(codes) != len(self):
            raise ValueError(f"{len(codes)} codes for {len(self)} frames")
        self.codes = torch.cat([self.codes[: self.dome_count], codes.to(self.codes.dtype)])
        self.targets = torch.arange(self.dome_count, self.dome_count + len(self))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        number, frame = self.entries[index]
        return self.subjects[number].headset.views(frame), index

    def views(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 [n,5,S,S] of pool frames `indices`."""
        return torch.stack([self[index][0] for index in indices])

    def code_location(self, code_id: int) -> tuple[int, int]:
        """(subject number, dome sample index) of a row of `codes`."""
        offsets = np.cumsum([0] + [len(subject.codes) for subject in self.subjects])
        number = int(np.searchsorted(offsets, code_id, side="right") - 1)
        return number, int(code_id - offsets[number])


class StepBatches:
    """Batches of pool indices, one per step from `start` to `stop`, each drawn from a generator
    seeded with (seed, step), so a resumed run draws exactly the batches of an unbroken one."""

    def __init__(self, size: int, batch: int, seed: int, start: int, stop: int) -> None:
        self.size, self.batch, self.seed, self.start, self.stop = size, batch, seed, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            yield torch.randint(self.size, (self.batch,), generator=generator).tolist()
