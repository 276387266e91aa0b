"""Hostile or absurd files from a download (issue 24): no reader runs code from a file or
allocates what a header claims before the bytes are there. Each worst case is one clear error
naming the file, and in a dataset the sample is replaced, as for any damaged member."""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from ava.data.formats import BadMember, encode_avif, encode_png, format_ply_vertices, parse_npy, parse_ply_vertices
from ava.errors import UserError
from tests.test_data_reader import _camera_ids, _rewrite, capture, pristine  # noqa: F401  (fixtures)

PEAK_BYTES = 16 << 20  # what reading one refused file may allocate at most (its own bytes and change)


class RunsACommand:
    """A pickle that runs `touch MARKER` when plain pickle loads it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def peak_allocation(function, *args):
    """(the exception `function(*args)` raised, peak bytes Python and numpy allocated meanwhile)."""
    tracemalloc.start()
    try:
        function(*args)
    except Exception as error:  # noqa: BLE001 - returned for the test to check
        raised = error
    else:
        raised = None
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return raised, peak


def avif_claiming(width: int, height: int) -> bytes:
    """A 16x16 AVIF whose 'ispe' box (the image size a decoder reads first) claims width x height."""
    data = encode_avif(np.zeros((16, 16, 3), np.uint8))
    at = data.index(b"ispe") + 8  # box type, then version and flags
    return data[:at] + struct.pack(">II", width, height) + data[at + 8 :]


def png_claiming(width: int, height: int) -> bytes:
    data = encode_png(np.zeros((16, 16, 3), np.uint8))
    at = data.index(b"IHDR")
    header = struct.pack(">II", width, height) + data[at + 12 : at + 17]
    return data[:at + 4] + header + struct.pack(">I", zlib.crc32(b"IHDR" + header)) + data[at + 21 :]


def zip_bomb(path: Path, member: str, inflated: int = 64 << 20) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr(member, bytes(inflated))


# --- each worst case on its own -----------------------------------------------------------------

def test_a_zip_bomb_is_refused_without_inflating_it(tmp_path):
    from ava.data.zips import ZipPool

    bomb = tmp_path / "image.zip"
    zip_bomb(bomb, "cam/000001.avif")
    assert bomb.stat().st_size < 200_000  # 64 MiB of zeros in a small file
    error, peak = peak_allocation(ZipPool().read, bomb, "cam/000001.avif")
    assert isinstance(error, BadMember) and "zip bomb" in str(error), error
    assert peak < PEAK_BYTES
    # A central directory that claims 4 GB for a small member (no inflation needed to lie).
    liar = tmp_path / "liar.zip"
    with zipfile.ZipFile(liar, "w") as archive:
        archive.writestr("000001.ply", b"ply\n")
    data = bytearray(liar.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = struct.pack("<I", 0xFFFF_FFF0)  # uncompressed size
    liar.write_bytes(bytes(data))
    with pytest.raises(BadMember, match=r"claims 4294967280 bytes uncompressed"):
        ZipPool().read(liar, "000001.ply")


def test_a_ply_header_declaring_a_trillion_vertices_allocates_nothing():
    body = np.zeros((4, 3), "<f4").tobytes()
    vertex_first = format_ply_vertices(np.zeros((4, 3), np.float32)).replace(b"vertex 4", b"vertex 1000000000000")
    # With another element first, the general reader (plyfile) would size its arrays from the header.
    face_first = (b"ply\nformat binary_little_endian 1.0\nelement face 0\nproperty list uchar int vertex_indices\n"
                  b"element vertex 1000000000000\nproperty float x\nproperty float y\nproperty float z\n"
                  b"end_header\n" + body)
    ascii_ply = (b"ply\nformat ascii 1.0\nelement vertex 1000000000000\nproperty float x\nproperty float y\n"
                 b"property float z\nend_header\n0 0 0\n")
    for data in (vertex_first, face_first, ascii_ply):
        error, peak = peak_allocation(parse_ply_vertices, data)
        assert isinstance(error, BadMember) and "1000000000000 vertex (at least" in str(error), error
        assert peak < PEAK_BYTES


@pytest.mark.parametrize("image, size", [(avif_claiming, (10_000, 10_000)), (avif_claiming, (60_000, 60_000)),
                                         (png_claiming, (10_000, 10_000)), (png_claiming, (60_000, 60_000))])
def test_an_image_claiming_too_many_pixels_is_an_error_not_a_warning(image, size):
    """Pillow only warns about an image between its limit (89 million pixels) and twice that, and
    then allocates for it (300 MB for 10000x10000); libavif refuses 60000x60000 itself."""
    from ava.data.formats import decode_image

    error, peak = peak_allocation(decode_image, image(*size), (41, 64))
    assert isinstance(error, BadMember), error
    assert "decompression bomb" in str(error) or "cannot be decoded" in str(error)
    assert peak < PEAK_BYTES


def test_an_npy_of_objects_or_with_an_absurd_shape_is_refused():
    import io

    objects = io.BytesIO()
    np.save(objects, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(BadMember, match="holds Python objects"):
        parse_npy(objects.getvalue())
    huge = io.BytesIO()
    np.lib.format.write_array_header_1_0(huge, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    huge.write(bytes(16))
    error, peak = peak_allocation(parse_npy, huge.getvalue())
    assert isinstance(error, BadMember) and "claims an array of shape [1000000000000]" in str(error), error
    assert peak < PEAK_BYTES


def test_a_safetensors_header_claiming_a_terabyte_is_refused(tmp_path):
    from ava.checkpoint import DamagedCheckpoint, load_checkpoint

    header = json.dumps({"model.w": {"dtype": "F32", "shape": [2**38], "data_offsets": [0, 2**40]},
                         "__metadata__": {"format": "ava-checkpoint", "format_version": "1"}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "step_00000001.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(64))
    with pytest.raises(DamagedCheckpoint, match=f"checkpoint {path} is damaged"):
        load_checkpoint(path)
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")  # a header length of a terabyte
    with pytest.raises(DamagedCheckpoint, match="header too large"):
        load_checkpoint(path)


def test_pickles_that_would_run_a_command_run_nothing(tmp_path, capsys):
    """The expression codes' .pkl (the restricted unpickler, ava.data.safe_load) and a .pt given to
    ava convert (torch's weights-only loader) from a file that runs `touch` under plain pickle."""
    from ava.cli import main as ava_main
    from ava.data.safe_load import RefusedPickle, load_pickle

    marker = tmp_path / "ran"
    pkl = tmp_path / "aeparams_1440000.pkl"
    pkl.write_bytes(pickle.dumps({"000123": RunsACommand(marker)}))
    with pytest.raises(RefusedPickle, match=f"{pkl}: refused to unpickle: it asks for (posix|nt).system"):
        load_pickle(pkl)
    pt = tmp_path / "aeparams.pt"
    torch.save({"w": torch.zeros(2), "x": RunsACommand(marker)}, pt)
    with pytest.raises(SystemExit) as exit_info:
        ava_main(["convert", str(pt), "-o", str(tmp_path / "out.safetensors")])
    assert exit_info.value.code == 2
    assert f"{pt} is not a PyTorch state dict (it holds Python objects besides tensors: it asks for posix.system" \
        in capsys.readouterr().err
    assert not marker.exists()
    pickle.loads(pkl.read_bytes())  # the same bytes under plain pickle: the threat is real
    assert marker.exists()


def test_text_files_that_inflate_or_nest_without_end(tmp_path, monkeypatch):
    """A gzip-compressed calibration that inflates past the limit (lowered here from 256 MiB to
    keep the test fast), JSON nested a million deep, a CSV field over the csv module's limit:
    each one line naming the file."""
    import gzip

    import ava.files
    from ava.data.calibration import read_calibration
    from ava.data.formats import parse_frame_list
    from ava.data.http import TransferError, decode_content
    from ava.data.ids import read_ids_csv

    monkeypatch.setattr(ava.files, "MAX_INFLATED_BYTES", 4 << 20)
    bomb = tmp_path / "camera_calibration.json"
    bomb.write_bytes(gzip.compress(bytes((4 << 20) + 1), compresslevel=9))
    error, peak = peak_allocation(read_calibration, bomb)
    assert isinstance(error, UserError) and f"{bomb} is damaged gzip data" in str(error), error
    assert "decompression bomb" in str(error)
    with pytest.raises(TransferError, match="decompression bomb"):  # the same from a server (Content-Encoding)
        decode_content(bomb.read_bytes(), "gzip")
    nested = tmp_path / "nested" / "camera_calibration.json"
    nested.parent.mkdir()
    nested.write_text("[" * 1_000_000)
    with pytest.raises(UserError, match=f"{nested} is nested too deeply"):
        read_calibration(nested)
    with pytest.raises(UserError, match="frame_list.csv is not a readable CSV file .*field larger than field limit"):
        parse_frame_list("seg_id,frame_id\n" + "x" * 200_000 + ",1\n", "frame_list.csv")
    ids = tmp_path / "ids.csv"
    ids.write_text('mcd,sid,mct\n"' + "x" * 200_000)
    with pytest.raises(UserError, match=f"{ids} is not a readable CSV file"):
        read_ids_csv(ids)


def test_an_obj_with_an_absurd_index_is_an_error_naming_the_file(tmp_path):
    from ava.nn.uvmap import load_obj

    obj = tmp_path / "face_topology.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 1000000000000/3\n")
    with pytest.raises(UserError, match=f"{obj}.*1000000000000"):
        load_obj(obj)


# --- in a dataset: the sample is replaced --------------------------------------------------------

def test_hostile_members_of_a_capture_are_replaced_like_damaged_ones(capture, capsys):  # noqa: F811
    """A mesh declaring a trillion vertices, a texture claiming 10000x10000 pixels and a camera
    image that is a zip bomb, in one capture: the loader fills every batch from the good samples
    and names each file once."""
    from torch.utils.data import DataLoader

    from ava.data.bad_data import BadDataReport
    from ava.data.collate import collate
    from ava.data.dataset import CaptureDataset

    reader = CaptureDataset(capture.root, downsample=64).reader
    # Three frames other than the neutral one (which conditions every sample): one file each.
    others = [frame for frame in reader.frames if frame.member != reader.neutral_frame.member][:3]
    camera = _camera_ids(capture)[0]
    mesh = reader.member_name(capture.vertices_zip, others[0])
    texture = reader.member_name(capture.texture_zip, others[1])
    bombed = reader.member_name(capture.image_zip(camera), others[2])
    _rewrite(capture.vertices_zip, lambda name, data: re.sub(rb"element vertex \d+", b"element vertex 1000000000000",
                                                             data, count=1) if name == mesh else data)
    _rewrite(capture.texture_zip, lambda name, data: avif_claiming(10_000, 10_000) if name == texture else data)
    with zipfile.ZipFile(capture.image_zip(camera)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(capture.image_zip(camera), "w") as archive:
        for name, data in members.items():
            if name == bombed:
                archive.writestr(name, bytes(64 << 20), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
            else:
                archive.writestr(name, data)
    dataset = CaptureDataset(capture.root, downsample=64)
    report = BadDataReport()
    for batch in DataLoader(dataset, batch_size=4, collate_fn=collate, shuffle=False):
        assert batch["image"].shape[0] == 4  # refilled, never shrunk
        report.update(batch)
    assert report.end_epoch(0) >= 3
    err = capsys.readouterr().err
    assert err.count(f"{capture.vertices_zip}/{mesh}") == 1 and "1000000000000 vertex (at least" in err
    assert err.count(f"{capture.texture_zip}/{texture}") == 1 and "decompression bomb" in err
    assert err.count(f"{capture.image_zip(camera)}/{bombed}") == 1 and "zip bomb" in err
