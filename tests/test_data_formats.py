"""Member formats (PLY, head pose, frame list) and the original's normalisation statistics."""

from __future__ import annotations

import io

import numpy as np
import plyfile
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ava.data.formats import BadMember, format_ply_vertices, parse_frame_list, parse_head_pose, parse_ply_vertices
from ava.data.stats import CaptureStats, combine_capture_stats
from ava.errors import UserError


def _plyfile_bytes(vertices: np.ndarray, text: bool, byte_order: str = "<", extra: bool = False) -> bytes:
    fields = [("x", byte_order + "f4"), ("y", byte_order + "f4"), ("z", byte_order + "f4")]
    if extra:
        fields = [("nx", byte_order + "f8")] + fields + [("red", "u1")]
    records = np.zeros(len(vertices), dtype=fields)
    for axis, column in zip("xyz", vertices.T):
        records[axis] = column
    elements = [plyfile.PlyElement.describe(records, "vertex")]
    buffer = io.BytesIO()
    plyfile.PlyData(elements, text=text, byte_order=byte_order if byte_order != "<" else "<").write(buffer)
    return buffer.getvalue()


@given(st.integers(1, 50), st.sampled_from(["ascii", "<", ">"]), st.booleans())
def test_ply_vertices_match_plyfile(count, encoding, extra):
    vertices = np.random.default_rng(count).normal(0, 100, (count, 3)).astype(np.float32)
    data = _plyfile_bytes(vertices, text=encoding == "ascii", byte_order="<" if encoding == "ascii" else encoding,
                          extra=extra)
    parsed = parse_ply_vertices(data)
    assert parsed.dtype == np.float32 and parsed.shape == (count, 3)
    np.testing.assert_allclose(parsed, vertices, rtol=1e-6)
    np.testing.assert_array_equal(parse_ply_vertices(format_ply_vertices(vertices)), vertices)


def test_bad_ply():
    data = format_ply_vertices(np.ones((10, 3), np.float32))
    with pytest.raises(BadMember, match="truncated"):
        parse_ply_vertices(data[:-5])
    with pytest.raises(BadMember, match="not a PLY"):
        parse_ply_vertices(b"garbage")


def _ply(header_lines: list[str], body: bytes) -> bytes:
    return ("\n".join(["ply", *header_lines, "end_header"]) + "\n").encode() + body


_XYZ = ["property float x", "property float y", "property float z"]
_BODY = np.arange(18, dtype="<f4").tobytes()


_BAD_PLY = [
    (["format binary_little_endian 1.0", "element vertex 31#6", *_XYZ], _BODY, "line 3 .*element NAME COUNT"),
    (["format binary_little_endian 1.0", "element vertex -6", *_XYZ], _BODY, "non-negative integer count"),
    (["format binary_little_endian 1.0", "element vertex", *_XYZ], _BODY, "element NAME COUNT"),
    (["format binary_little_endian", "element vertex 6", *_XYZ], _BODY, "expected 'format"),
    (["format binary_middle_endian 1.0", "element vertex 6", *_XYZ], _BODY, "expected 'format"),
    (["element vertex 6", *_XYZ], _BODY, "no format line"),
    (["format binary_little_endian 1.0", "element vertex 6", "property float x", "property float y",
      "property float128 z"], _BODY, "line 6 .*property TYPE NAME"),
    (["format binary_little_endian 1.0", "element vertex 6", "property float x", "property float y",
      "property float"], _BODY, "property TYPE NAME"),
    (["format binary_little_endian 1.0", "element vertex 6", *_XYZ, "property float x"], _BODY, "appears twice"),
    (["format binary_little_endian 1.0", "property float x", "element vertex 6", *_XYZ], _BODY, "before any element"),
    (["format binary_little_endian 1.0", "elemnt vertex 6", *_XYZ], _BODY, "unknown keyword 'elemnt'"),
    (["format binary_little_endian 1.0", "element face 1", "property list uchar int vertex_indices"],
     b"\x03" + bytes(12), "no vertex element"),
    (["format binary_little_endian 1.0", "element vertex 6", "property float x", "property float y"], _BODY,
     "lacks x/y/z"),
    (["format binary_little_endian 1.0", "element vertex 7", *_XYZ], _BODY, "truncated"),
    (["format binary_little_endian 1.0", "element vertex 99999999999999", *_XYZ], _BODY, "truncated"),
    (["format ascii 1.0", "element vertex 2", *_XYZ], b"1 2 3\n4 5\n", "truncated or its header lies"),
    (["format ascii 1.0", "element vertex 2", *_XYZ], b"1 2 3\n4 5 6 7\n", "does not hold 2 vertices"),
    (["format ascii 1.0", "element vertex 2", *_XYZ], b"1 2 3\n4 five 6\n", "non-numeric"),
    # plyfile's path (vertex after another element, list properties): damaged bodies and counts
    (["format binary_little_endian 1.0", "element face 1", "property list uchar int vertex_indices",
      "element vertex 6", *_XYZ], b"\x03" + bytes(12) + _BODY[:-8], "PLY cannot be parsed"),
    (["format ascii 1.0", "element face 1", "property list uchar int vertex_indices", "element vertex 2", *_XYZ],
     b"3 0 1 2\n1 2 3\n4 x 6\n", "PLY cannot be parsed"),
]


@pytest.mark.parametrize("header, body, message", _BAD_PLY, ids=[message for *_, message in _BAD_PLY])
def test_every_malformed_ply_is_a_bad_member(header, body, message):
    with pytest.raises(BadMember, match=message):
        parse_ply_vertices(_ply(header, body))


_GOOD_PLY = [format_ply_vertices(np.arange(15, dtype=np.float32).reshape(5, 3)),
             _ply(["format ascii 1.0", "comment x", "element vertex 2", *_XYZ, "element face 1",
                   "property list uchar int vertex_indices"], b"1 2 3\n4 5 6\n3 0 1 1\n"),
             _ply(["format binary_big_endian 1.0", "element face 0", "property list uchar int vertex_indices",
                   "element vertex 2", "property double x", "property uchar red", "property double y",
                   "property double z"], np.zeros(2, ">f8,u1,>f8,>f8").tobytes())]


@given(st.sampled_from(range(len(_GOOD_PLY))), st.lists(st.tuples(st.integers(0, 400), st.binary(max_size=3),
                                                                   st.integers(0, 3)), min_size=1, max_size=4))
def test_damaged_ply_bytes_parse_or_raise_bad_member(which, edits):
    data = bytearray(_GOOD_PLY[which])
    for position, insert, delete in edits:  # overwrite, insert or cut a few bytes anywhere
        position %= len(data) + 1
        data[position:position + delete] = insert
    try:
        vertices = parse_ply_vertices(bytes(data))
    except BadMember:
        return
    assert vertices.dtype == np.float32 and vertices.ndim == 2 and vertices.shape[1] == 3


def test_head_pose_and_frame_list():
    pose = parse_head_pose(b"1 0 0 5\n0 1 0 6\n0 0 1 7\n")
    assert pose.dtype == np.float32 and pose.shape == (3, 4) and pose[2, 3] == 7
    with pytest.raises(BadMember):
        parse_head_pose(b"1 0 0\n")
    rows = parse_frame_list("seg_id,frame_id\nEXP_neutral_peak,31744\nEXP_free_face,000123\n", "f.csv")
    assert rows == [("EXP_neutral_peak", "31744"), ("EXP_free_face", "000123")]
    assert parse_frame_list("frame_id,seg_id\n7,A\n", "f.csv") == [("A", "7")]
    with pytest.raises(UserError, match="f.csv line 2"):
        parse_frame_list("seg_id,frame_id\nA,x7\n", "f.csv")


def _random_stats(rng, count):
    return [CaptureStats(texmean=rng.uniform(0, 255, (3, 8, 8)).astype(np.float32), texvar=float(rng.uniform(1, 9)),
                         vertmean=rng.normal(0, 50, (20, 3)).astype(np.float32), vertvar=float(rng.uniform(1, 4)))
            for _ in range(count)]


@pytest.mark.parametrize("count", [1, 3])
def test_multi_capture_statistics_match_the_direct_formulas(count):
    captures = _random_stats(np.random.default_rng(count), count)
    combined = combine_capture_stats(iter(captures))
    texmeans = np.stack([c.texmean for c in captures]).astype(np.float64)
    vertmeans = np.stack([c.vertmean for c in captures]).astype(np.float64)
    texmean = texmeans.mean(axis=0)
    vertmean = vertmeans.mean(axis=0)
    if count == 1:
        texstd = np.sqrt(np.mean((texmean - texmean.mean(axis=0, keepdims=True)) ** 2))
    else:
        texstd = np.sqrt(np.sum((texmeans - texmean) ** 2) / (texmean.size * count))
    vertstd = np.sqrt(np.sum((vertmeans - vertmean) ** 2) / (vertmean.size * count)
                      + np.mean([c.vertvar for c in captures]))
    np.testing.assert_allclose(combined.texmean, texmean, rtol=1e-6)
    np.testing.assert_allclose(combined.vertmean, vertmean, rtol=1e-5, atol=1e-4)
    assert combined.texstd == pytest.approx(texstd, rel=1e-9)
    assert combined.vertstd == pytest.approx(vertstd, rel=1e-9)
    assert isinstance(combined.texstd, float) and isinstance(combined.vertstd, float)


def test_statistics_refuse_mixed_sizes():
    first, second = _random_stats(np.random.default_rng(0), 2)
    second.vertmean = second.vertmean[:10]
    with pytest.raises(UserError, match="disagree on sizes"):
        combine_capture_stats([first, second])
