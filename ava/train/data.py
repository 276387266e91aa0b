"""Training data: which dataset and captures, held-out cameras, datasets and a resumable loader.

Index conventions (docs/architecture.md): `camindex` is the position of a camera in the sorted list of ALL
cameras of the selected captures, held-out ones included, so that the checkpoint's camera list
covers every camera a render may ask for; `idindex` is the capture's position in the training list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from ava.data.bad_data import ArchiveProblem, summarise_archive_problems
from ava.data.calibration import read_calibration
from ava.data.dataset import CaptureDataset, MultiCaptureDataset, NoUsableSamples
from ava.data.ids import CaptureId
from ava.data.layout import CaptureLayout
from ava.data.splits import SubjectSplit, split_subjects
from ava.synth.config import IDS_FILENAME
from ava.errors import UserError


# The presets' ids CSV names: the release's list and a synthetic set's. Either preset then reads
# either kind of dataset; a file the user named is never swapped for another.
DEFAULT_IDS_CSVS = ("256_ids.csv", IDS_FILENAME)


def ids_csv_path(dataset_dir: Path, data_csv: str) -> Path:
    """The ids CSV: absolute, else in the dataset folder, else relative to the working directory.
    When `data_csv` is one of the presets' names (DEFAULT_IDS_CSVS) and absent, the dataset's file
    of the other name; any other missing name is a UserError."""
    named = Path(data_csv).expanduser()
    candidates = [named] if named.is_absolute() else [dataset_dir / named, named]
    if data_csv in DEFAULT_IDS_CSVS:
        candidates += [dataset_dir / name for name in DEFAULT_IDS_CSVS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(
        f"ids CSV {data_csv} not found in {dataset_dir} or the working directory; pass --train.data-csv PATH"
    )


def select_captures(listed: Sequence[CaptureId], ids: Sequence[str], nids: int, source: str,
                    flag: str = "--train.ids") -> list[CaptureId]:
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
            raise UserError(f"{flag} names a capture twice")
        return chosen
    if nids < 1:
        raise UserError(f"--train.nids must be at least 1, got {nids}")
    if nids > len(listed):
        raise UserError(f"--train.nids is {nids} but {source} lists only {len(listed)} captures")
    return list(listed[:nids])


def select_subjects(listed: Sequence[CaptureId], train, source: str) -> tuple[list[CaptureId], SubjectSplit]:
    """(the captures to train on, the subject split) from `train` (an ava.train.config.TrainSection).

    The selected captures (--train.ids, else the first --train.nids rows) lose the held-out
    subjects: those named by --train.holdout-subjects (test) and --train.validation-subjects, which
    may also be captures outside the selection, else --train.num-holdout-subjects chosen among the
    selection by ava.data.splits.split_subjects. Every capture of a held-out subject stays out.
    """
    pool = select_captures(listed, train.ids, train.nids, source)
    if train.holdout_subjects or train.validation_subjects:
        test = select_captures(listed, train.holdout_subjects, 1, source, "--train.holdout-subjects") \
            if train.holdout_subjects else []
        validation = select_captures(listed, train.validation_subjects, 1, source, "--train.validation-subjects") \
            if train.validation_subjects else []
        both = sorted({capture.sid for capture in test} & {capture.sid for capture in validation})
        if both:
            raise UserError(f"subject(s) {', '.join(both)} are both validation and test subjects; name each once")
        held = {capture.sid for capture in test + validation}
        training = [capture for capture in pool if capture.sid not in held]
        split = SubjectSplit(tuple(capture.folder for capture in training),
                             tuple(capture.folder for capture in validation), tuple(capture.folder for capture in test))
    elif train.num_holdout_subjects:
        if not 0 <= train.num_validation_subjects <= train.num_holdout_subjects:
            raise UserError(f"--train.num-validation-subjects ({train.num_validation_subjects}) must be between 0 and "
                            f"--train.num-holdout-subjects ({train.num_holdout_subjects})")
        split = split_subjects([capture.folder for capture in pool], train.num_validation_subjects,
                               train.num_holdout_subjects - train.num_validation_subjects, train.split_seed)
        training = [capture for capture in pool if capture.folder in set(split.train)]
    else:
        training, split = pool, SubjectSplit(tuple(capture.folder for capture in pool))
    if not training:
        raise UserError(f"holding out {len(split.held_out)} subjects leaves none of the {len(pool)} selected captures "
                        "to train on; select more with --train.nids or --train.ids")
    return training, split


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
        # Only the ids are needed here; the dataset checks the cameras against a head pose.
        cameras.append([camera.camera_id for camera in read_calibration(layout.calibration, in_front_of=None)])
    return cameras


def select_cameras(per_capture: list[list[str]], wanted: Sequence[str],
                   captures: Sequence[CaptureId]) -> list[list[str]]:
    """Each capture's cameras restricted to `wanted` (`--train.cameras`; all when empty), in the
    capture's own order. Ids in no capture, and a capture left without a camera, are UserErrors."""
    if not wanted:
        return per_capture
    wanted_set = {str(camera) for camera in wanted}
    every = {camera for cameras in per_capture for camera in cameras}
    unknown = sorted(wanted_set - every)
    if unknown:
        raise UserError(f"--train.cameras {unknown} are in no selected capture's calibration "
                        f"(they list e.g. {', '.join(sorted(every)[:6])})")
    chosen = [[camera for camera in cameras if camera in wanted_set] for cameras in per_capture]
    for capture, cameras, kept in zip(captures, per_capture, chosen):
        if not kept:
            raise UserError(f"--train.cameras leaves capture {capture.folder} without a camera "
                            f"(it has {', '.join(cameras[:6])}{'...' if len(cameras) > 6 else ''})")
    return chosen


def choose_holdout_cameras(per_capture: list[list[str]], explicit: Sequence[str], count: int) -> list[str]:
    """The held-out camera ids: `explicit`, else `count` picked round-robin over the captures
    (each time the middle one, in id order, of the capture's cameras not yet chosen)."""
    every = {camera for cameras in per_capture for camera in cameras}
    if explicit:
        unknown = sorted(set(explicit) - every)
        if unknown:
            raise UserError(f"held-out cameras {unknown} are in none of the selected captures' cameras")
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
    archive_problems: list[ArchiveProblem] = field(default_factory=list)
    """What construction found wrong, training and held-out datasets together."""
    split: SubjectSplit | None = None
    """The subjects: trained (`captures`), validation and test (never trained on)."""
    holdout_segments: list[str] = field(default_factory=list)
    """Segments left out of the training samples."""
    dropped_samples: int = 0
    """Training samples left out because their frame is in a held-out segment."""

    @property
    def stats(self):
        return self.train.stats

    def describe(self) -> list[str]:
        """Lines for the console: every construction problem once, then what training really uses."""
        lines = []
        problems = summarise_archive_problems(self.archive_problems)
        if problems:
            lines.append(f"warning: what reading the captures found ({len(problems)} "
                         f"archive{'s' if len(problems) > 1 else ''}):")
            lines += [f"  {problem}" for problem in problems]
            if any(problem.camera is not None for problem in self.archive_problems):
                lines.append("  skipped cameras: download their archives again (`ava download` replaces damaged "
                             "files) or leave them out with --train.cameras")
        trained = self.train.usable_camera_ids
        held_out = sorted({camera for part in (self.holdout.datasets if self.holdout else ())
                           for camera in part.usable_camera_ids})
        unused = sorted(set(self.cameras) - set(trained) - set(held_out))
        line = (f"data: {len(self.captures)} captures, {len(self.train)} training samples at {self.train.width}x"
                f"{self.train.height} (WxH); training on {len(trained)} of {len(self.cameras)} cameras")
        if self.holdout_cameras:
            line += f", {len(held_out)} held out ({', '.join(held_out) or 'none usable'})"
        if unused:
            line += f", {len(unused)} without usable data ({', '.join(unused[:8])}{'...' if len(unused) > 8 else ''})"
        lines.append(line)
        if self.split is not None and self.split.held_out:
            lines.append("held-out subjects (never trained on): " + "; ".join(
                f"{role} {', '.join(folder.split('--')[-1] for folder in getattr(self.split, role))}"
                for role in ("validation", "test") if getattr(self.split, role)))
        if self.holdout_segments:
            lines.append(f"held-out segments (never trained on): {', '.join(self.holdout_segments)} "
                         f"({self.dropped_samples} samples left out)")
        return lines


def build_training_data(dataset_dir: Path, captures: list[CaptureId], downsample: int,
                        holdout: Sequence[str], holdout_count: int, progress: bool,
                        cameras: Sequence[str] = (), split: SubjectSplit | None = None,
                        holdout_segments: Sequence[str] = ()) -> TrainingData:
    """The training and held-out datasets; `cameras` restricts every capture to those ids, and
    frames of `holdout_segments` are left out of training. The normalisation statistics come from
    `captures` alone (the subjects trained on), as the original computes them."""
    per_capture = select_cameras(capture_cameras(dataset_dir, captures), cameras, captures)
    holdout_cameras = choose_holdout_cameras(per_capture, holdout, holdout_count)
    all_cameras = sorted({camera for cameras in per_capture for camera in cameras})
    training_cameras = [camera for camera in all_cameras if camera not in set(holdout_cameras)]
    train = MultiCaptureDataset(dataset_dir, captures, downsample, cameras=training_cameras, progress=progress)
    _use_camera_order(train.datasets, all_cameras)
    train.camera_ids = all_cameras
    segments = list(dict.fromkeys(holdout_segments))
    dropped = 0
    if segments:
        known = {frame.segment for part in train.datasets for frame in part.reader.frames}
        unknown = [segment for segment in segments if segment not in known]
        if unknown:
            raise UserError(f"--train.holdout-segments {', '.join(unknown)}: no capture has such a segment "
                            f"(they have {', '.join(sorted(known))})")
        dropped = train.drop_segments(segments)
    problems = list(train.archive_problems)
    holdout_parts = []
    for identity, (capture, cameras) in enumerate(zip(captures, per_capture)):
        mine = [camera for camera in cameras if camera in set(holdout_cameras)]
        if not mine:
            continue
        try:
            part = CaptureDataset(dataset_dir / capture.folder, downsample, cameras=mine, stats=train.stats)
        except NoUsableSamples as error:
            # Held-out cameras whose archives are all unusable cost their PSNR, not the run.
            problems += error.archive_problems
            continue
        part.identity_index = identity
        holdout_parts.append(part)
        problems += part.archive_problems
    _use_camera_order(holdout_parts, all_cameras)
    return TrainingData(
        dataset_dir=dataset_dir,
        captures=list(captures),
        cameras=all_cameras,
        holdout_cameras=holdout_cameras,
        train=train,
        holdout=ConcatDataset(holdout_parts) if holdout_parts else None,
        archive_problems=problems,
        split=split,
        holdout_segments=segments,
        dropped_samples=dropped,
    )


def _use_camera_order(parts: Sequence[CaptureDataset], cameras: list[str]) -> None:
    # CaptureDataset maps a camera to its position in `camera_ids` (sorted); giving every part the
    # full list makes held-out and training samples agree on camindex.
    for part in parts:
        part.camera_ids = cameras


class EpochSampler(Sampler[int]):
    """A shuffled order per epoch, drawn from (seed, epoch) and split across ranks like
    DistributedSampler, that can start part-way into an epoch: exactly where a resumed run left off.

    Every rank gets `per_rank = ceil(length / world_size)` samples, for any length and world size:
    the permutation is repeated as often as needed to fill `per_rank * world_size` places (with
    fewer samples than ranks, samples repeat across ranks), so no rank runs out before the others
    and waits for ever in a collective.
    """

    def __init__(self, length: int, rank: int, world_size: int, seed: int) -> None:
        if length < 0 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler needs length >= 0 and 0 <= rank < world_size, "
                             f"got length {length}, rank {rank}, world size {world_size}")
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
        if self.length == 0:
            return iter(())
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / self.length))[:total]
        mine = order[self.rank :: self.world_size]
        return iter(mine[self.start :])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


def nonempty_batches(loader: DataLoader) -> Iterator[dict]:
    """The batches of `loader`; a loader that yields none raises UserError once it is exhausted.

    A training loop that counts steps would otherwise go round an empty epoch for ever (and, under
    torchrun, leave the other ranks waiting). Breaking out early raises nothing.
    """
    empty = True
    for batch in loader:
        empty = False
        yield batch
    if empty:
        sampler = loader.sampler
        where = (f"rank {sampler.rank} of {sampler.world_size}, {len(sampler)} samples"
                 if isinstance(sampler, EpochSampler) else f"{len(sampler)} samples")
        raise UserError(f"the data loader produced no batch ({where}, batches of {loader.batch_size}); "
                        "lower --train.batchsize or train on fewer processes")


MAX_AUTO_WORKERS = 8
"""Cap of the automatic worker count: a worker delivers about 30 ava256 samples/s (BENCHMARKS.md,
data loading), so 8 feed well over 100 samples/s per GPU; more would only cost memory."""


def default_num_workers(local_world_size: int, cpus: int | None = None) -> int:
    """Loader workers per process when --train.num-workers is not given: this process's share of
    the usable cores (`cpus`, default: ava.runtime.device.usable_cores) among the `local_world_size`
    processes of the node, less one core for the training process itself; 0..MAX_AUTO_WORKERS."""
    if cpus is None:
        from ava.runtime.device import usable_cores

        cpus = usable_cores()  # affinity (taskset, cpusets, SLURM bindings) and cgroup quota
    share = cpus // max(local_world_size, 1)
    return max(0, min(MAX_AUTO_WORKERS, share - 1))


def make_loader(dataset, sampler: EpochSampler, batchsize: int, num_workers: int, pin_memory: bool) -> DataLoader:
    from ava.data.collate import collate
    from ava.runtime.interrupt import ignore_stop_signals

    return DataLoader(
        dataset,
        batch_size=batchsize,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=True,
        pin_memory=pin_memory,
        # Workers live for the whole run: starting them again each epoch costs seconds of data
        # wait per epoch, which dominates on small sets. The sampler is still iterated in this
        # process, so set_epoch takes effect, and the dataset draws no random numbers, so a
        # resumed run loads exactly what an unbroken one would.
        persistent_workers=num_workers > 0,
        worker_init_fn=ignore_stop_signals,
        # Its own generator: a DataLoader otherwise draws worker seeds from the global RNG each
        # epoch, which would make the latent noise after a resume differ from an unbroken run.
        generator=torch.Generator().manual_seed(sampler.seed),
    )
