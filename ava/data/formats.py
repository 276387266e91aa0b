"""Decoders and encoders for the member formats of a capture (docs/data-layout.md).

Every decoder takes the raw bytes of one zip member and raises `BadMember` when they cannot be
what the format promises, so the dataset can skip that one sample and say why. Files come from the
internet, so no decoder believes a header's sizes before the bytes are there: a PLY's element
counts and an `.npy`'s shape must fit the body that follows them, an image may not claim more
pixels than Pillow's decompression-bomb limit (an error here, not Pillow's warning), and an
`.npy` holding Python objects (a pickle) is refused.
"""

from __future__ import annotations

import csv
import io
import math
import re
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np
from PIL import Image

from ava.errors import UserError


class BadMember(Exception):
    """A member's bytes are truncated, corrupt or of the wrong shape."""


# --- PLY --------------------------------------------------------------------------------------

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_END_HEADER = re.compile(rb"end_header\r?\n")


_PLY_FORMATS = ("ascii", "binary_little_endian", "binary_big_endian")


def _ply_header(data: bytes) -> tuple[str, list[tuple[str, int, list[list[str]]]], int]:
    """(format, [(element, count, property lines)], body offset); BadMember for any malformed line."""
    if not data.startswith(b"ply"):
        raise BadMember("not a PLY file")
    match = _END_HEADER.search(data, 0, 65536)
    if match is None:
        raise BadMember("PLY header has no end_header")
    lines = data[: match.start()].decode("ascii", errors="replace").splitlines()
    ply_format = ""
    elements: list[tuple[str, int, list[list[str]]]] = []
    for number, line in enumerate(lines[1:], start=2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        where = f"PLY header line {number} {line.strip()[:60]!r}"
        if words[0] == "format":
            if len(words) != 3 or words[1] not in _PLY_FORMATS:
                raise BadMember(f"{where}: expected 'format ascii|binary_little_endian|binary_big_endian 1.0'")
            ply_format = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not re.fullmatch(r"[0-9]+", words[2]):
                raise BadMember(f"{where}: expected 'element NAME COUNT' with a non-negative integer count")
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            scalar = len(words) == 3 and words[1] in _PLY_TYPES
            listed = len(words) == 5 and words[1] == "list" and words[2] in _PLY_TYPES and words[3] in _PLY_TYPES
            if not (scalar or listed):
                raise BadMember(f"{where}: expected 'property TYPE NAME' or 'property list TYPE TYPE NAME'")
            if not elements:
                raise BadMember(f"{where}: a property before any element")
            if words[-1] in [prop[-1] for prop in elements[-1][2]]:
                raise BadMember(f"{where}: property {words[-1]!r} appears twice")
            elements[-1][2].append(words[1:])
        else:
            raise BadMember(f"{where}: unknown keyword {words[0]!r}")
    if not ply_format:
        raise BadMember("PLY header has no format line")
    return ply_format, elements, match.end()


def parse_ply_vertices(data: bytes) -> np.ndarray:
    """Vertex positions [V,3] float32 (properties x, y, z) of a PLY file, parsed vectorised.

    The vertex element is read straight from the body with numpy when it comes first (the layout
    of the registration meshes); other layouts fall back to plyfile. Whatever is wrong with the
    bytes (header, counts, property types, a short or non-numeric body) raises BadMember.
    """
    with np.errstate(over="ignore"):  # doubles beyond float32 become inf; the dataset refuses non-finite meshes
        return _parse_ply_vertices(data)


def _smallest_record(ply_format: str, properties: list[list[str]]) -> int:
    """The fewest bytes one record of these properties can take: binary, every scalar's size and
    every list's count; ascii, one digit and one separator per value (an empty list's count too)."""
    if ply_format == "ascii":
        return 2 * len(properties)
    return sum(np.dtype(_PLY_TYPES[prop[1] if prop[0] == "list" else prop[0]]).itemsize for prop in properties)


def _check_counts(ply_format: str, elements: list[tuple[str, int, list[list[str]]]], body: int) -> None:
    """BadMember when the header's element counts cannot fit in `body` bytes: nothing is allocated
    for records that are not there (a header may claim 10^12 vertices)."""
    needed = sum(count * _smallest_record(ply_format, properties) for _, count, properties in elements)
    if ply_format == "ascii":
        needed -= 1  # the last value needs no separator after it
    if needed > body:
        claims = ", ".join(f"{count} {name}" for name, count, _ in elements)
        raise BadMember(f"PLY body is truncated or its header lies: the header declares {claims} (at least {needed} "
                        f"bytes), but only {body} bytes follow it")


def _parse_ply_vertices(data: bytes) -> np.ndarray:
    ply_format, elements, body = _ply_header(data)
    _check_counts(ply_format, elements, len(data) - body)
    vertex = [element for element in elements if element[0] == "vertex"]
    if not vertex:
        raise BadMember("PLY has no vertex element")
    names = [prop[-1] for prop in vertex[0][2]]
    if not {"x", "y", "z"} <= set(names):
        raise BadMember(f"PLY vertex element lacks x/y/z (has {names})")
    if elements[0][0] != "vertex" or any(prop[0] == "list" for prop in vertex[0][2]):
        return _parse_ply_with_plyfile(data)
    _, count, properties = elements[0]
    columns = [names.index(axis) for axis in "xyz"]
    if ply_format in ("binary_little_endian", "binary_big_endian"):
        order = "<" if ply_format == "binary_little_endian" else ">"
        dtype = np.dtype([(name, order + _PLY_TYPES[prop[0]]) for name, prop in zip(names, properties)])
        if len(data) - body < count * dtype.itemsize:
            raise BadMember(f"PLY body is truncated ({len(data) - body} bytes for {count} vertices)")
        records = np.frombuffer(data, dtype=dtype, count=count, offset=body)
        return np.stack([records[axis] for axis in "xyz"], axis=1).astype(np.float32).reshape(count, 3)
    # ascii: only the first `count` lines belong to the vertex element.
    lines = data[body:].split(b"\n", count)[:count]
    try:
        values = np.array(b" ".join(lines).split(), dtype=np.float64)
    except ValueError:
        raise BadMember("PLY ascii body has a non-numeric vertex value") from None
    if len(lines) < count or values.size != count * len(names):
        raise BadMember(f"PLY ascii body does not hold {count} vertices of {len(names)} values")
    return values.reshape(count, len(names))[:, columns].astype(np.float32)


def _parse_ply_with_plyfile(data: bytes) -> np.ndarray:
    import plyfile

    try:
        vertices = plyfile.PlyData.read(io.BytesIO(data))["vertex"].data
        return np.stack([vertices[axis] for axis in "xyz"], axis=1).astype(np.float32).reshape(-1, 3)
    except Exception as error:  # noqa: BLE001 - plyfile fails in many ways on damaged bytes; all mean one bad member
        raise BadMember(f"PLY cannot be parsed: {type(error).__name__}: {error}") from None


def format_ply_vertices(vertices: np.ndarray) -> bytes:
    """A binary little-endian PLY holding only the vertex element (float x, y, z)."""
    vertices = np.ascontiguousarray(vertices, dtype="<f4")
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    )
    return header.encode("ascii") + vertices.tobytes()


# --- images -----------------------------------------------------------------------------------


@contextmanager
def open_image(data: bytes) -> Iterator[Image.Image]:
    """The Pillow image of `data`, not yet decoded; BadMember for bytes Pillow cannot identify and
    for an image that claims more pixels than Image.MAX_IMAGE_PIXELS (about 89 million; the
    largest Ava-256 image has 11 million): Pillow only warns below twice that limit and would
    then allocate for the claimed size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                yield image
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise BadMember(f"image refused as a decompression bomb: {error}") from None
    except (OSError, ValueError, SyntaxError) as error:  # PIL raises these for corrupt/truncated data
        raise BadMember(f"image cannot be decoded: {error}") from None


def decode_image(data: bytes, size: tuple[int, int] | None = None, mode: str = "RGB",
                 resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
    """Decodes an image (AVIF, PNG, ...) to uint8 [H,W,C] (or [H,W] for mode "L"), resized to `size`=(W,H).

    Pillow's BICUBIC resize widens its kernel when shrinking, so it is an antialiased filter, and it
    is the filter the original used, which keeps images comparable.
    """
    with open_image(data) as image:
        image.load()
        if image.mode != mode:
            image = image.convert(mode)
        if size is not None and image.size != tuple(size):
            image = image.resize(tuple(size), resample=resample)
        return np.asarray(image)


def encode_avif(pixels: np.ndarray, quality: int = 90, speed: int = 10) -> bytes:
    """AVIF bytes for uint8 [H,W,3] pixels (4:4:4, so small images keep their colours)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(
        buffer, format="AVIF", quality=quality, speed=speed, subsampling="4:4:4"
    )
    return buffer.getvalue()


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes for uint8 [H,W,3] or [H,W] pixels."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- small text and npy members --------------------------------------------------------------


def parse_head_pose(data: bytes) -> np.ndarray:
    """A head pose member: 3 rows of 4 whitespace-separated numbers -> float32 [3,4] (head -> world)."""
    try:
        values = np.array(data.split(), dtype=np.float64)
    except ValueError:
        raise BadMember("head pose holds a non-numeric value") from None
    if values.size != 12 or not np.all(np.isfinite(values)):
        raise BadMember(f"head pose holds {values.size} numbers; expected a finite 3x4 matrix")
    return values.reshape(3, 4).astype(np.float32)


def format_head_pose(pose: np.ndarray) -> bytes:
    """Text for a [3,4] head pose, one row per line."""
    return "".join(" ".join(f"{value:.9g}" for value in row) + "\n" for row in np.asarray(pose)).encode()


def parse_npy(data: bytes) -> np.ndarray:
    """A `.npy` member as an array. Its header is read first: an object dtype (the array would be
    a pickle, which can run code) and a shape whose data is not all in `data` (a header can claim
    terabytes) are BadMember before anything is allocated."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(stream)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as error:
        raise BadMember(f"npy cannot be read: {error}") from None
    if dtype.hasobject:
        raise BadMember(f"npy holds Python objects (dtype {dtype}), which only a pickle can load; refused")
    needed = math.prod(shape) * dtype.itemsize
    if needed > len(data) - stream.tell():
        raise BadMember(f"npy header claims an array of shape {list(shape)} and dtype {dtype} ({needed} bytes), "
                        f"but only {len(data) - stream.tell()} bytes follow it")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise BadMember(f"npy cannot be read: {error}") from None


def format_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def parse_variance(text: str, source: str) -> float:
    """A variance file: one non-negative number."""
    try:
        value = float(text.split()[0])
    except (IndexError, ValueError):
        raise UserError(f"{source} does not hold a number; re-download it") from None
    if not np.isfinite(value) or value < 0:
        raise UserError(f"{source} holds {value}, which is not a variance")
    return value


# --- frame lists ------------------------------------------------------------------------------

FRAME_LIST_HEADER = ("seg_id", "frame_id")


def csv_rows(text: str, source: str) -> list[list[str]]:
    """The rows of a CSV text that hold anything; UserError naming `source` for text the csv module
    refuses (a field over its 128 kB limit, a quote left open)."""
    try:
        return [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    except csv.Error as error:
        raise UserError(f"{source} is not a readable CSV file ({error}); download it again") from None


def parse_frame_list(text: str, source: str) -> list[tuple[str, str]]:
    """`frame_list.csv` rows as (seg_id, frame_id) strings, in file order (docs/data-layout.md)."""
    rows = csv_rows(text, source)
    if not rows:
        raise UserError(f"{source} is empty; expected a header seg_id,frame_id")
    header = tuple(cell.strip() for cell in rows[0])
    if set(header) != set(FRAME_LIST_HEADER) or len(header) != 2:
        raise UserError(f"{source} has header {','.join(header)!r}; expected 'seg_id,frame_id'")
    seg_column, frame_column = header.index("seg_id"), header.index("frame_id")
    frames = []
    for line_number, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not row[frame_column].strip().isdigit():
            raise UserError(f"{source} line {line_number}: expected seg_id,frame_id with an integer frame id")
        frames.append((row[seg_column].strip(), row[frame_column].strip()))
    return frames


def format_frame_list(rows: list[tuple[str, str]]) -> str:
    return "seg_id,frame_id\n" + "".join(f"{seg},{frame}\n" for seg, frame in rows)


def member_frame(frame_id: str) -> str:
    """The 6-digit form of a frame id used in member names (`int(frame)` as `%06d`)."""
    return f"{int(frame_id):06d}"
