"""Datasets of Ava-256 captures returning the samples of docs/data-layout.md.

Differences from the original, on purpose (docs/architecture.md):
- `camindex` is the position of the camera in the sorted union of all camera ids of the dataset and
  `idindex` the position of the capture in the ids list, the same in every dataset built from the
  same captures; `camera_ids` and `capture_ids` expose both mappings.
- A sample whose member is missing or corrupt is replaced by another sample (chosen
  deterministically from the index) and the skipped file is noted in the sample's `"skipped"`
  string (see bad_data.py); the batch keeps its size.
- Members missing from the zips are found once, at construction, and never asked for; a camera
  whose archive is missing or unreadable is skipped (`archive_problems` lists both kinds, with the
  frames each costs, for the caller to print once).

Sample layout (before collation; H, W from the sensor size in the calibration // downsample;
T, V from the capture's files):
  camrot f32 [3,3], campos f32 [3] (head frame, mm), focal f32 [2], princpt f32 [2],
  modelmatrix f32 [4,4] (identity), avgtex/neut_avgtex f32 [3,T,T] (normalised),
  verts/neut_verts f32 [V,3] (normalised), pixelcoords f32 [H,W,2] (x, y), idindex int,
  camindex int, image f32 [3,H,W] (0..255), headpose f32 [3,4], frameid str, cameraid str,
  validinput bool, imagemask f32 [1,H,W], skipped str;
  optionally segmentation u8 [1,H,W], keypoints3d f32 [274,5] and keypoints3d_valid bool [274].
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ava.data.bad_data import SKIPPED_KEY, ArchiveProblem, Problem, encode_problems
from ava.data.calibration import camera_in_head_frame, output_size
from ava.data.capture import CaptureReader, MemberError
from ava.data.ids import CaptureId
from ava.data.stats import NormStats, combine_capture_stats, read_capture_stats
from ava.errors import UserError

# How many other samples to try before concluding that the data is unusable.
MAX_REPLACEMENTS = 64


class NoUsableSamples(UserError):
    """A capture (or its selected cameras) has no sample left; `archive_problems` says why."""

    def __init__(self, message: str, archive_problems: list[ArchiveProblem]) -> None:
        super().__init__(message)
        self.archive_problems = list(archive_problems)


def _first_problems(problems: list[Problem], count: int = 5) -> str:
    return "; ".join(str(problem) for problem in problems[:count])


class CaptureDataset(Dataset):
    """The samples of one capture: every usable (frame, camera) pair, cameras varying fastest.

    root: the capture folder `<dataset_dir>/<mcd>--<mct>--<sid>`.
    downsample: images are loaded at (sensor size) // downsample; intrinsics are divided by it.
    cameras: camera ids to use (in this order), default all cameras of the calibration.
    stats: normalisation statistics; default this capture's own (means, sqrt of the variances).
    """

    def __init__(
        self,
        root: str | Path,
        downsample: int = 4,
        cameras: Sequence[str] | None = None,
        stats: NormStats | None = None,
        with_segmentation: bool = False,
        with_keypoints: bool = False,
        *,
        defer_stats: bool = False,
    ) -> None:
        self.reader = CaptureReader(root, list(cameras) if cameras is not None else None,
                                    with_segmentation, with_keypoints)
        self.downsample = int(downsample)
        self.height, self.width = output_size(self.reader.cameras, self.downsample, str(self.reader.layout.calibration))
        frame_rows, camera_columns = np.nonzero(self.reader.image_ok)
        self._frame_rows = frame_rows.astype(np.int64)
        self._camera_columns = camera_columns.astype(np.int64)
        if len(self._frame_rows) == 0:
            raise NoUsableSamples(
                f"{self.reader.layout.root} has no usable frame; first problems: "
                f"{_first_problems(self.reader.problems) or 'the frame list selects nothing'}",
                self.reader.archive_problems,
            )
        self.identity_index = 0
        self.camera_ids = sorted(self.reader.camera_ids)
        self.failures: list[Problem] = []  # this process's load failures, in order
        self._neutral_cache: tuple | None = None
        if not defer_stats:  # MultiCaptureDataset sets the combined statistics itself
            self.set_stats(stats if stats is not None else read_capture_stats(self.reader.layout).as_norm_stats())

    @property
    def construction_problems(self) -> list[Problem]:
        """Members listed in the frame list but missing from the zips (found at construction)."""
        return self.reader.problems

    @property
    def archive_problems(self) -> list[ArchiveProblem]:
        """The construction problems per archive, with the frames each costs (bad_data.ArchiveProblem)."""
        return self.reader.archive_problems

    @property
    def usable_camera_ids(self) -> list[str]:
        """Cameras with at least one sample (a camera whose archive is unusable has none)."""
        return self.reader.usable_camera_ids

    def set_stats(self, stats: NormStats) -> None:
        self.stats = stats
        self._neutral_cache = None
        self._check_stats()

    def _check_stats(self) -> None:
        texture_size = self.stats.texmean.shape[1:]
        neutral = self.reader.neutral_texture.shape[:2]
        vertex_count = self.stats.vertmean.shape[0]
        if neutral != texture_size or self.reader.neutral_vertices.shape[0] != vertex_count:
            raise UserError(
                f"{self.reader.layout.root}: its neutral frame has a {neutral[1]}x{neutral[0]} texture and "
                f"{self.reader.neutral_vertices.shape[0]} vertices, but the statistics are for "
                f"{texture_size[1]}x{texture_size[0]} and {vertex_count}; mixed releases?"
            )

    def __len__(self) -> int:
        return len(self._frame_rows)

    def __getitem__(self, index: int) -> dict:
        index = _check_index(index, len(self))
        skipped: list[Problem] = []
        # Replacements jump by about 0.618 of the dataset (another frame, another camera), coprime
        # with its length so that every sample is reachable.
        stride = _coprime_stride(len(self))
        for attempt in range(MAX_REPLACEMENTS + 1):
            candidate = (index + attempt * stride) % len(self)
            try:
                sample = self.load_sample(candidate)
            except MemberError as error:
                skipped.append(error.problem)
                self.failures.append(error.problem)
                continue
            sample[SKIPPED_KEY] = encode_problems(skipped)
            return sample
        raise UserError(
            f"{self.reader.layout.root}: {len(skipped)} samples in a row could not be loaded; first problems: "
            f"{_first_problems(skipped)}"
        )

    def _normalised_neutral(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._neutral_cache is None:
            self._neutral_cache = (
                self._normalise_texture(self.reader.neutral_texture),
                self._normalise_vertices(self.reader.neutral_vertices),
            )
        return self._neutral_cache

    def _normalise_texture(self, texture: np.ndarray) -> torch.Tensor:
        chw = torch.from_numpy(np.ascontiguousarray(texture.transpose(2, 0, 1))).float()
        return (chw - torch.from_numpy(self.stats.texmean)) / self.stats.texstd

    def _normalise_vertices(self, vertices: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(vertices) - torch.from_numpy(self.stats.vertmean)) / self.stats.vertstd

    def neutral_conditioning(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(neut_avgtex [3,T,T], neut_verts [V,3]): the neutral frame's texture and mesh, normalised
        with this dataset's statistics (what every sample carries as its identity conditioning)."""
        return self._normalised_neutral()

    def drop_segments(self, segments) -> int:
        """Leaves out every sample of a frame in one of `segments` (segment names); returns how
        many samples went. NoUsableSamples when none is left."""
        segments = set(segments)
        keep = np.array([self.reader.frames[row].segment not in segments for row in self._frame_rows], dtype=bool)
        if not keep.any():
            raise NoUsableSamples(f"{self.reader.layout.root}: every usable frame is in the left-out segments "
                                  f"{', '.join(sorted(segments))}", [])
        dropped = int((~keep).sum())
        self._frame_rows, self._camera_columns = self._frame_rows[keep], self._camera_columns[keep]
        return dropped

    def sample_ids(self, index: int) -> tuple[str, str]:
        """(frame id, camera id) of sample `index`, without loading it."""
        index = _check_index(index, len(self))
        frame = self.reader.frames[self._frame_rows[index]]
        return frame.frame_id, self.reader.cameras[self._camera_columns[index]].camera_id

    def load_sample(self, index: int) -> dict:
        """Sample `index` with no replacement: raises MemberError when one of its members is bad."""
        reader = self.reader
        frame = reader.frames[self._frame_rows[index]]
        camera = reader.cameras[self._camera_columns[index]]
        vertices = reader.load_vertices(frame)
        texture = reader.load_texture(frame)
        where = f"{reader.layout.root} frame {frame.frame_id}"
        if vertices.shape != self.stats.vertmean.shape:
            member = reader.member_name(reader.layout.vertices_zip, frame)
            raise MemberError(Problem(f"{reader.layout.vertices_zip}/{member}",
                                      f"mesh has {vertices.shape[0]} vertices, the mean {self.stats.vertmean.shape[0]}"))
        if texture.shape[:2] != self.stats.texmean.shape[1:]:
            raise MemberError(Problem(f"{where} texture", f"texture is {texture.shape[1]}x{texture.shape[0]}, "
                                      f"the mean texture {self.stats.texmean.shape[2]}x{self.stats.texmean.shape[1]}"))
        headpose = reader.load_head_pose(frame)
        image = reader.load_image(camera.camera_id, frame, (self.width, self.height))
        camrot, campos = camera_in_head_frame(camera, headpose.astype(np.float64))
        neutral_texture, neutral_vertices = self._normalised_neutral()
        sample = {
            "camrot": torch.from_numpy(camrot.astype(np.float32)),
            "campos": torch.from_numpy(campos.astype(np.float32)),
            "focal": torch.from_numpy((camera.focal / self.downsample).astype(np.float32)),
            "princpt": torch.from_numpy((camera.principal_point / self.downsample).astype(np.float32)),
            "modelmatrix": torch.eye(4),
            "avgtex": self._normalise_texture(texture),
            "verts": self._normalise_vertices(vertices),
            "neut_avgtex": neutral_texture,
            "neut_verts": neutral_vertices,
            "pixelcoords": pixel_coordinates(self.height, self.width),
            "idindex": self.identity_index,
            "camindex": self.camera_index(camera.camera_id),
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float(),
            "headpose": torch.from_numpy(headpose),
            "frameid": frame.frame_id,
            "cameraid": camera.camera_id,
            "validinput": True,
            "imagemask": torch.ones(1, self.height, self.width),
        }
        if reader.with_segmentation:
            labels = reader.load_segmentation(camera.camera_id, frame, (self.width, self.height))
            sample["segmentation"] = torch.from_numpy(np.array(labels))[None]
        if reader.with_keypoints:
            values, valid = reader.load_keypoints(frame)
            sample["keypoints3d"] = torch.from_numpy(values)
            sample["keypoints3d_valid"] = torch.from_numpy(valid)
        return sample

    def camera_index(self, camera_id: str) -> int:
        return bisect.bisect_left(self.camera_ids, camera_id)


def pixel_coordinates(height: int, width: int) -> torch.Tensor:
    """f32 [H,W,2]: [...,0] the column x, [...,1] the row y, integers as floats (no half-pixel offset)."""
    rows, columns = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                                   torch.arange(width, dtype=torch.float32), indexing="ij")
    return torch.stack([columns, rows], dim=-1)


def _check_index(index: int, length: int) -> int:
    index = int(index)
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"sample index {index} out of range for {length} samples")
    return index


def _coprime_stride(length: int) -> int:
    stride = max(1, int(length * 0.6180339887))
    while math.gcd(stride, length) != 1:
        stride += 1
    return stride


class MultiCaptureDataset(Dataset):
    """Several captures in ids-list order (docs/data-layout.md), with the multi-capture statistics of docs/data-layout.md.

    dataset_dir: holds one folder per capture. captures: the ids, in the order that defines
    `idindex`. stats: pass the training statistics when building a dataset for evaluation or
    rendering, so inputs are normalised as in training; None computes them from these captures.
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        captures: Sequence[CaptureId],
        downsample: int = 4,
        cameras: Sequence[str] | None = None,
        stats: NormStats | None = None,
        with_segmentation: bool = False,
        with_keypoints: bool = False,
        progress: bool = False,
    ) -> None:
        if not captures:
            raise UserError("no captures given; pass at least one capture id")
        if len(set(captures)) != len(captures):
            raise UserError("a capture is listed twice in the ids list")
        self.dataset_dir = Path(dataset_dir)
        self.capture_ids = list(captures)
        roots = [self.dataset_dir / capture.folder for capture in self.capture_ids]
        missing = [root for root in roots if not root.is_dir()]
        if missing:
            raise UserError(
                f"capture folder {missing[0]} does not exist ({len(missing)} of {len(roots)} missing); "
                "download the captures or fix --dataset-dir"
            )
        self.datasets: list[CaptureDataset] = []
        for root in _progress(roots, "reading captures", progress):
            self.datasets.append(
                CaptureDataset(root, downsample, cameras, stats=None, with_segmentation=with_segmentation,
                               with_keypoints=with_keypoints, defer_stats=True)
            )
        if stats is None:
            per_capture = (read_capture_stats(d.reader.layout) for d in self.datasets)
            stats = combine_capture_stats(_progress(per_capture, "normalisation statistics", progress, len(roots)))
        self.camera_ids = sorted(set().union(*(d.reader.camera_ids for d in self.datasets)))
        sizes = {(d.height, d.width) for d in self.datasets}
        if len(sizes) != 1:
            raise UserError(f"captures load at different image sizes {sorted(sizes)}; select cameras of one sensor")
        for identity_index, dataset in enumerate(self.datasets):
            dataset.identity_index = identity_index
            dataset.camera_ids = self.camera_ids
            dataset.set_stats(stats)
        self.stats = stats
        self.cumulative = np.cumsum([len(d) for d in self.datasets]).tolist()

    @property
    def camera_index(self) -> dict[str, int]:
        """camera id -> camindex."""
        return {camera: i for i, camera in enumerate(self.camera_ids)}

    @property
    def identity_index(self) -> dict[CaptureId, int]:
        """capture id -> idindex."""
        return {capture: i for i, capture in enumerate(self.capture_ids)}

    @property
    def height(self) -> int:
        return self.datasets[0].height

    @property
    def width(self) -> int:
        return self.datasets[0].width

    @property
    def construction_problems(self) -> list[Problem]:
        return [problem for dataset in self.datasets for problem in dataset.construction_problems]

    @property
    def archive_problems(self) -> list[ArchiveProblem]:
        return [problem for dataset in self.datasets for problem in dataset.archive_problems]

    @property
    def usable_camera_ids(self) -> list[str]:
        """Sorted ids of the cameras with at least one sample in some capture."""
        return sorted({camera for dataset in self.datasets for camera in dataset.usable_camera_ids})

    @property
    def failures(self) -> list[Problem]:
        return [problem for dataset in self.datasets for problem in dataset.failures]

    def __len__(self) -> int:
        return self.cumulative[-1]

    def drop_segments(self, segments) -> int:
        """Leaves out every sample of the given segments in every capture (CaptureDataset.drop_segments);
        returns how many samples went."""
        dropped = sum(dataset.drop_segments(segments) for dataset in self.datasets)
        self.cumulative = np.cumsum([len(d) for d in self.datasets]).tolist()
        return dropped

    def locate(self, index: int) -> tuple[int, int]:
        """(capture position, index within that capture) of sample `index`."""
        index = _check_index(index, len(self))
        position = bisect.bisect_right(self.cumulative, index)
        start = self.cumulative[position - 1] if position else 0
        return position, index - start

    def __getitem__(self, index: int) -> dict:
        position, local = self.locate(index)
        return self.datasets[position][local]


def _progress(items, description: str, enabled: bool, total: int | None = None):
    if not enabled:
        yield from items
        return
    from rich.progress import track

    from ava.console import make_console

    console = make_console()  # a transient bar shows nothing in a log file, but would leave a blank line
    yield from track(items, description=description, total=total, transient=True, console=console,
                     disable=not console.is_interactive)
