"""The release's files beyond the original's code: foreground masks, background images, expression
codes and headset ground-truth encodings (docs/data-layout.md#beyond-the-original-code).

Two unmerged branches of the original repository describe them (DATASHEET.md, download.py); no
code of the original reads them, and nobody here could check the files on the server. What the
datasheet says is taken as the format; what it leaves open is detected, and a file of another
structure is one UserError saying what it holds:

- foreground masks, `decoder/foreground_masks/cam{C}.zip`: one 8-bit grey image per frame (AVIF),
  high for the person, low for the background; the member names are assumed to be the image zips'
  (`cam{C}/{frame}.avif`) and the prefix is detected per archive.
- background images, `decoder/background_image/background_image.zip`: one image of the empty
  backdrop per camera, `{C}.avif` (`cam{C}.avif` and any folder are accepted too).
- expression codes, `decoder/expression_codes/aeparams_1440000.pkl`: a pickled dict frame id ->
  256-dimensional expression code of the released decoder, read with the restricted unpickler
  (`ava.data.safe_load`), never with plain pickle.
- headset encodings, `encoder/encodings_gt.pt` with `encoder/encodings_framelist.csv`: the
  ground-truth expression code of headset frames, read with `torch.load(weights_only=True)`. The
  branches give only the names; ava takes the frame list to have frame_list.csv's columns
  (seg_id,frame_id, headset frame ids) and the .pt to hold one 256-number row per listed frame
  (a tensor [N,256]) or a dict frame id -> 256 numbers.

`WithExtras` adds a capture's background and mask to the samples of a dataset, for training and
evaluation.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from ava.data.formats import BadMember, decode_image, member_frame, parse_frame_list
from ava.data.layout import CaptureLayout, UnknownNaming, detect_naming, foreground_mask_naming
from ava.data.safe_load import describe, load_pickle, load_torch
from ava.data.zips import ZipPool
from ava.errors import UserError
from ava.files import read_text

CODE_SIZE = 256
"""Length of an expression code (the decoder's [16,4,4] code, flattened)."""
IMAGE_EXTENSIONS = ("avif", "png", "jpg", "jpeg")


# --- expression codes and headset encodings -----------------------------------------------------


@dataclass
class FrameCodes:
    """Expression codes by frame: `codes` f32 [N,256], row i for frame `frames[i]` (6-digit member
    form); `segments[i]` its segment where a frame list names it."""

    frames: list[str]
    codes: np.ndarray
    source: str
    segments: list[str] | None = None

    def __post_init__(self) -> None:
        self._row = {frame: row for row, frame in enumerate(self.frames)}

    def __len__(self) -> int:
        return len(self.frames)

    def code(self, frame_id: str) -> np.ndarray | None:
        """The code [256] of a frame (any spelling of its number), None when the file has none."""
        row = self._row.get(member_frame(frame_id))
        return None if row is None else self.codes[row]

    def grid(self, frame_id: str) -> torch.Tensor | None:
        """The code as the decoder's [16,4,4] (row-major, as torch flattens it), or None."""
        code = self.code(frame_id)
        return None if code is None else torch.from_numpy(code.reshape(16, 4, 4).copy())


def _frame_key(key: Any, source: str, found: str) -> str:
    if isinstance(key, (bool, np.bool_)):
        raise _structure(source, found)
    if isinstance(key, (int, np.integer)) and key >= 0:
        return f"{int(key):06d}"
    if isinstance(key, str) and key.strip().isdigit():
        return member_frame(key.strip())
    raise _structure(source, found, f" (a key {key!r} is not a frame number)")


def _as_array(value: Any) -> np.ndarray | None:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        try:
            return np.asarray(value)
        except (ValueError, TypeError):
            return None
    return None


def _structure(source: str, found: str, detail: str = "") -> UserError:
    return UserError(f"{source} holds {found}{detail}; expected a dict frame id -> {CODE_SIZE} numbers "
                     f"(or, for encodings_gt.pt, a tensor [N,{CODE_SIZE}] with one row per frame of "
                     "encodings_framelist.csv)")


def _code_rows(array: np.ndarray, count: int, source: str, found: str) -> np.ndarray:
    """[count,256] f32 from an array of count x 256 numbers; UserError otherwise."""
    if array.dtype.kind not in "biuf" or array.size != count * CODE_SIZE or (count > 1 and array.shape[0] != count):
        raise _structure(source, found)
    rows = array.reshape(count, CODE_SIZE).astype(np.float32)
    if not np.all(np.isfinite(rows)):
        raise UserError(f"{source} holds non-finite codes; download it again")
    return rows


def codes_from_value(value: Any, source: str) -> tuple[list[str], np.ndarray]:
    """(frames, codes [N,256]) of a dict frame id -> code (array, tensor or list of 256 numbers, any
    shape of 256 elements, e.g. [256], [1,256] or [16,4,4])."""
    found = describe(value)
    if not isinstance(value, dict) or not value:
        raise _structure(source, found)
    frames, rows = [], []
    for key, code in value.items():
        array = _as_array(code)
        if array is None:
            raise _structure(source, found)
        frames.append(_frame_key(key, source, found))
        rows.append(_code_rows(array, 1, source, found)[0])
    if len(set(frames)) != len(frames):
        raise UserError(f"{source} lists a frame twice (as two spellings of one number)")
    return frames, np.stack(rows)


def read_expression_codes(path: str | Path) -> FrameCodes:
    """`decoder/expression_codes/aeparams_1440000.pkl`: the dome frames' codes, read with the
    restricted unpickler (a pickle asking for anything but data is refused)."""
    path = Path(path)
    frames, codes = codes_from_value(load_pickle(path), str(path))
    return FrameCodes(frames, codes, str(path))


def read_headset_encodings(encodings: str | Path, frame_list: str | Path | None = None) -> FrameCodes:
    """`encoder/encodings_gt.pt` (torch.load weights_only) with `encoder/encodings_framelist.csv`:
    a tensor [N,256] (or [N,...] of 256 per row) gives the codes of the list's N frames in order;
    a dict frame id -> code needs no list. The list's segments are kept where it is given."""
    encodings = Path(encodings)
    value = load_torch(encodings)
    listed = None
    if frame_list is not None and Path(frame_list).is_file():
        listed = parse_frame_list(read_text(Path(frame_list)), str(frame_list))
    array = None if isinstance(value, dict) else _as_array(value)
    if array is not None:
        if listed is None:
            raise UserError(f"{encodings} holds {describe(value)}, one row per frame of encodings_framelist.csv, "
                            f"which is missing beside it; download the encodings group again")
        if array.ndim < 1 or array.shape[0] != len(listed):
            raise UserError(f"{encodings} holds {describe(value)} but {frame_list} lists {len(listed)} frames")
        if not listed:
            raise UserError(f"{frame_list} lists no frames")
        codes = _code_rows(array, len(listed), str(encodings), describe(value))
        frames = [member_frame(frame) for _, frame in listed]
        if len(set(frames)) != len(frames):
            raise UserError(f"{frame_list} lists a frame twice")
        return FrameCodes(frames, codes, str(encodings), [segment for segment, _ in listed])
    frames, codes = codes_from_value(value, str(encodings))
    segments = None
    if listed is not None:
        segment_of = {member_frame(frame): segment for segment, frame in listed}
        segments = [segment_of.get(frame, "") for frame in frames]
    return FrameCodes(frames, codes, str(encodings), segments)


def capture_codes(root: str | Path) -> tuple[FrameCodes | None, FrameCodes | None]:
    """(dome expression codes, headset encodings) of a capture folder, each None where absent."""
    layout = CaptureLayout(Path(root))
    dome = read_expression_codes(layout.expression_codes) if layout.expression_codes.is_file() else None
    headset = read_headset_encodings(layout.encodings, layout.encodings_frame_list) if layout.encodings.is_file() \
        else None
    return dome, headset


# --- background images and foreground masks -----------------------------------------------------


def background_members(names: list[str], source: str) -> dict[str, str]:
    """camera id -> member of background_image.zip: `{C}.avif`, `cam{C}.avif`, in any folder."""
    members: dict[str, str] = {}
    for name in names:
        stem, _, extension = name.rsplit("/", 1)[-1].rpartition(".")
        if extension.lower() not in IMAGE_EXTENSIONS or not stem:
            continue
        camera = stem[3:] if stem.startswith("cam") else stem
        if camera in members:
            raise UserError(f"{source} holds two backgrounds of camera {camera} ({members[camera]}, {name})")
        members[camera] = name
    return members


class CaptureExtras:
    """A capture's background images and foreground masks, where it has them (both optional).

    Images come at a requested size (W,H): backgrounds as f32 [3,H,W] in 0..255 (bicubic, like the
    photos), masks as f32 [1,H,W] in 0..1 (bilinear). A mask member that is missing (a dropped frame)
    or cannot be decoded gives None; the latter is noted in `problems`.
    """

    CACHE = 16  # decoded backgrounds kept per process (one per camera and size)

    def __init__(self, root: str | Path) -> None:
        self.layout = CaptureLayout(Path(root))
        self.zips = ZipPool()
        self.problems: list[str] = []
        self._background_members: dict[str, str] | None = None
        self._mask_naming: dict[str, object] = {}
        self._cache: OrderedDict = OrderedDict()

    def __getstate__(self) -> dict:
        return {"root": self.layout.root}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"])

    def background_cameras(self) -> dict[str, str]:
        """camera id -> member of the capture's background_image.zip ({} without one)."""
        if self._background_members is None:
            path = self.layout.background_zip
            if not path.is_file():
                self._background_members = {}
            else:
                try:
                    names = sorted(self.zips.names(path))
                except BadMember as error:
                    raise UserError(f"{path}: {error}; download the background_image group again") from None
                self._background_members = background_members(names, str(path))
        return self._background_members

    def background(self, camera: str, size: tuple[int, int]) -> np.ndarray | None:
        """The camera's empty backdrop, f32 [3,H,W] 0..255 at size (W,H), or None."""
        member = self.background_cameras().get(str(camera))
        if member is None:
            return None
        key = (str(camera), tuple(size))
        if key not in self._cache:
            path = self.layout.background_zip
            try:
                pixels = decode_image(self.zips.read(path, member), tuple(size))
            except BadMember as error:
                raise UserError(f"{path}/{member}: {error}; download the background_image group again") from None
            self._cache[key] = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
            while len(self._cache) > self.CACHE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def has_masks(self, camera: str) -> bool:
        return self.layout.foreground_mask_zip(str(camera)).is_file()

    def mask(self, camera: str, frame_id: str, size: tuple[int, int]) -> np.ndarray | None:
        """The frame's foreground mask, f32 [1,H,W] in 0..1 at size (W,H), or None."""
        camera = str(camera)
        path = self.layout.foreground_mask_zip(camera)
        if camera not in self._mask_naming:
            naming = None
            if path.is_file():
                try:
                    naming = detect_naming(self.zips.names(path), foreground_mask_naming(camera))
                except (BadMember, UnknownNaming) as error:
                    self.problems.append(f"{path}: {error}; its masks are not used")
            self._mask_naming[camera] = naming
        naming = self._mask_naming[camera]
        if naming is None:
            return None
        member = naming.member(member_frame(frame_id))
        try:
            pixels = decode_image(self.zips.read(path, member), tuple(size), mode="L",
                                  resample=Image.Resampling.BILINEAR)
        except BadMember as error:
            if str(error) != "member is missing":
                self.problems.append(f"{path}/{member}: {error}")
            return None
        return (pixels.astype(np.float32) / 255.0)[None]


def _capture_root(dataset: Dataset, index: int) -> tuple[Path, int]:
    """(capture folder, index within it) of sample `index` of a CaptureDataset, a
    MultiCaptureDataset or a ConcatDataset of either."""
    if isinstance(dataset, ConcatDataset):
        part = bisect.bisect_right(dataset.cumulative_sizes, index)
        start = dataset.cumulative_sizes[part - 1] if part else 0
        return _capture_root(dataset.datasets[part], index - start)
    if hasattr(dataset, "locate"):
        part, local = dataset.locate(index)
        return _capture_root(dataset.datasets[part], local)
    return Path(dataset.reader.layout.root), index


class WithExtras(Dataset):
    """The samples of `dataset` (a CaptureDataset, MultiCaptureDataset or ConcatDataset of them)
    with, when asked for, the camera's real background and the frame's foreground mask:

    background f32 [3,H,W] (0..255; zeros where the capture has none for that camera),
    background_valid bool; fgmask f32 [1,H,W] (0..1; ones where there is no mask), fgmask_valid bool.
    """

    def __init__(self, dataset: Dataset, *, background: bool = False, mask: bool = False) -> None:
        self.dataset = dataset
        self.with_background = background
        self.with_mask = mask
        self._extras: dict[Path, CaptureExtras] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def extras(self, root: Path) -> CaptureExtras:
        if root not in self._extras:
            self._extras[root] = CaptureExtras(root)
        return self._extras[root]

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[index]
        extras = self.extras(_capture_root(self.dataset, index)[0])
        height, width = sample["image"].shape[-2:]
        if self.with_background:
            background = extras.background(sample["cameraid"], (width, height))
            sample["background_valid"] = background is not None
            sample["background"] = torch.from_numpy(background) if background is not None \
                else torch.zeros(3, height, width)
        if self.with_mask:
            mask = extras.mask(sample["cameraid"], sample["frameid"], (width, height))
            sample["fgmask_valid"] = mask is not None
            sample["fgmask"] = torch.from_numpy(mask) if mask is not None else torch.ones(1, height, width)
        return sample


def capture_roots(dataset: Dataset) -> list[Path]:
    """Every capture folder a CaptureDataset, MultiCaptureDataset or ConcatDataset reads."""
    if isinstance(dataset, ConcatDataset) or hasattr(dataset, "locate"):
        return list(dict.fromkeys(root for part in dataset.datasets for root in capture_roots(part)))
    return [Path(dataset.reader.layout.root)]


def coverage(dataset: Dataset, cameras: list[str]) -> tuple[int, int, int]:
    """(captures, captures with a background of some of `cameras`, captures with masks of some of
    them), to say what a run will use before it starts."""
    roots = capture_roots(dataset)
    extras = [CaptureExtras(root) for root in roots]
    backgrounds = sum(any(camera in capture.background_cameras() for camera in cameras) for capture in extras)
    masks = sum(any(capture.has_masks(camera) for camera in cameras) for capture in extras)
    return len(roots), backgrounds, masks

