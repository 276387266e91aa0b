"""The capture reader: bad data is skipped, counted and reported; missing files are clear errors."""

from __future__ import annotations

import dataclasses
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from ava.data.bad_data import BadDataReport
from ava.data.collate import collate
from ava.data.calibration import read_calibration
from ava.data.dataset import CaptureDataset, MultiCaptureDataset, NoUsableSamples
from ava.data.ids import read_ids_csv
from ava.data.layout import CaptureLayout
from ava.synth import SynthConfig, generate
from ava.errors import UserError

TINY = dict(n_ids=2, n_frames=4, n_cams=2, downsample=64, texture_size=32, prims_per_side=8, voxels=4,
            mesh_columns=16, mesh_rows=12, workers=1, keypoints=False)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("captures")
    generate(out, SynthConfig(**TINY), progress=False)
    return out


@pytest.fixture
def capture(pristine, tmp_path) -> CaptureLayout:
    """A private copy of the first capture, free to damage."""
    folder = read_ids_csv(pristine / "ids.csv")[0].folder
    shutil.copytree(pristine / folder, tmp_path / folder)
    return CaptureLayout(tmp_path / folder)


def _rewrite(archive: Path, change) -> None:
    """Rewrites a zip; `change(name, data)` returns new bytes, or None to drop the member."""
    with zipfile.ZipFile(archive) as source:
        members = [(name, source.read(name)) for name in source.namelist()]
    with zipfile.ZipFile(archive, "w") as target:
        for name, data in members:
            data = change(name, data)
            if data is not None:
                target.writestr(name, data)


def _camera_ids(layout: CaptureLayout) -> list[str]:
    return [camera.camera_id for camera in read_calibration(layout.calibration)]


def test_missing_members_are_left_out_at_construction(capture):
    camera = _camera_ids(capture)[0]
    with zipfile.ZipFile(capture.image_zip(camera)) as archive:
        dropped = [archive.namelist()[1]]
    _rewrite(capture.image_zip(camera), lambda name, data: None if name in dropped else data)
    dataset = CaptureDataset(capture.root, downsample=64)
    assert len(dataset) == 4 * 2 - len(dropped)
    assert [p.path for p in dataset.construction_problems] == [f"{capture.image_zip(camera)}/{n}" for n in dropped]
    ids = {dataset.sample_ids(i) for i in range(len(dataset))}
    assert len(ids) == len(dataset)


def test_corrupt_members_are_replaced_and_reported_once(capture, capsys):
    camera = _camera_ids(capture)[1]
    with zipfile.ZipFile(capture.image_zip(camera)) as archive:
        bad_image = archive.namelist()[2]
    _rewrite(capture.image_zip(camera), lambda n, d: b"\x00not an avif" + d[:20] if n == bad_image else d)
    with zipfile.ZipFile(capture.vertices_zip) as archive:
        bad_mesh = archive.namelist()[3]
    _rewrite(capture.vertices_zip, lambda n, d: d[: len(d) // 2] if n == bad_mesh else d)
    dataset = CaptureDataset(capture.root, downsample=64)
    assert len(dataset) == 8 and not dataset.construction_problems  # members exist; damage shows on load
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate, shuffle=False)
    report = BadDataReport()
    seen_frames = []
    for epoch in range(2):
        for batch in loader:
            assert batch["image"].shape == (4, 3, 64, 41)  # refilled, never shrunk
            assert torch.isfinite(batch["verts"]).all()
            seen_frames += batch["frameid"]
            report.update(batch)
        assert report.end_epoch(epoch) == 3  # the two samples of the bad mesh's frame, one bad image
    err = capsys.readouterr().err
    assert err.count(f"{capture.image_zip(camera)}/{bad_image}") == 1
    assert err.count(f"{capture.vertices_zip}/{bad_mesh}") == 1
    assert "PLY body is truncated" in err and "image cannot be decoded" in err
    assert err.count("samples replaced") == 2
    assert f"{int(bad_mesh[:6])}" not in {f"{int(f)}" for f in seen_frames}


def test_dataset_without_usable_samples_names_the_problems(capture):
    for camera in _camera_ids(capture):
        _rewrite(capture.image_zip(camera), lambda n, d: d[:10])
    dataset = CaptureDataset(capture.root, downsample=64)
    with pytest.raises(UserError, match="could not be loaded; first problems: .*image cannot be decoded"):
        dataset[0]
    for camera in _camera_ids(capture):
        capture.image_zip(camera).write_bytes(capture.image_zip(camera).read_bytes()[:100])  # truncated zip
    with pytest.raises(UserError, match=r"has no usable frame; first problems: .*cam\d+\.zip: archive cannot be opened"):
        CaptureDataset(capture.root, downsample=64)


@pytest.mark.parametrize("which", ["frame_list", "calibration", "vertices_mean", "texture_variance", "head_pose_zip"])
def test_missing_required_file_is_named(capture, which):
    path = getattr(capture, which)
    path.unlink()
    with pytest.raises(UserError, match=f"missing required file {path}"):
        CaptureDataset(capture.root, downsample=64)


def test_text_files_stored_gzip_compressed_read_as_plain(capture):
    """`ava download` keeps an object the server labels Content-Encoding gzip as stored (sizes and
    MD5s refer to those bytes); the reader must take such a calibration, frame list or variance."""
    import gzip

    plain = CaptureDataset(capture.root, downsample=64)
    for path in (capture.calibration, capture.frame_list, capture.texture_variance, capture.vertices_variance):
        path.write_bytes(gzip.compress(path.read_bytes()))
    stored = CaptureDataset(capture.root, downsample=64)
    assert len(stored) == len(plain) and stored.reader.camera_ids == plain.reader.camera_ids
    assert torch.equal(stored[0]["image"], plain[0]["image"]) and torch.equal(stored[0]["verts"], plain[0]["verts"])


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\xff", b"\x1f\x8b\x08\x00truncated"])
@pytest.mark.parametrize("which", ["calibration", "frame_list", "texture_variance"])
def test_a_text_file_that_is_not_text_is_named(capture, which, content):
    path = getattr(capture, which)
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"{path} is (not UTF-8 text|damaged gzip data)"):
        CaptureDataset(capture.root, downsample=64)


@pytest.mark.parametrize("damage", ["missing", "truncated", "not a zip"])
def test_unusable_camera_archive_skips_that_camera_and_says_so(capture, damage):
    first, second = _camera_ids(capture)
    archive = capture.image_zip(first)
    if damage == "missing":  # what a size tier's 404 leaves
        archive.unlink()
    elif damage == "truncated":  # an interrupted copy: the central directory is gone
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    else:
        archive.write_bytes(b"<html>403 Forbidden</html>")
    dataset = CaptureDataset(capture.root, downsample=64)
    assert {dataset.sample_ids(i)[1] for i in range(len(dataset))} == {second}
    assert dataset.usable_camera_ids == [second] and dataset.reader.camera_ids == [first, second]
    [problem] = dataset.archive_problems
    assert (problem.archive, problem.camera, problem.frames_lost, problem.frames_listed) == (str(archive), first, 4, 4)
    reason = "archive is missing" if damage == "missing" else "archive cannot be opened"
    assert str(problem).startswith(f"{archive}: {reason}") and str(problem).endswith(
        f"(4 of 4 frames lost; camera {first} skipped)")
    with pytest.raises(NoUsableSamples, match=f"has no usable frame; first problems: {archive}: {reason}") as error:
        CaptureDataset(capture.root, downsample=64, cameras=[first])
    assert error.value.archive_problems == [problem]


def test_camera_selection(capture):
    first, second = _camera_ids(capture)
    dataset = CaptureDataset(capture.root, downsample=64, cameras=[second, "999999"])
    assert {dataset.sample_ids(i)[1] for i in range(len(dataset))} == {second}
    with pytest.raises(UserError, match="none of the cameras"):
        CaptureDataset(capture.root, downsample=64, cameras=["999999"])


def test_members_under_another_folder_are_found(capture):
    first, second = _camera_ids(capture)
    # Repacked by hand: an extra top-level folder in one camera zip and in the texture zip, none in the other.
    with zipfile.ZipFile(capture.image_zip(first)) as archive:
        names = archive.namelist()
    _repack(capture.image_zip(first), lambda name: f"decoder/image/{name}")
    _repack(capture.image_zip(second), lambda name: name.split("/")[-1])
    _repack(capture.texture_zip, lambda name: f"uv_image/{name}")
    with zipfile.ZipFile(capture.image_zip(second), "a") as archive:  # stray files do not confuse it
        archive.writestr("__MACOSX/._000001.avif", b"junk")
        archive.writestr("README.txt", b"notes")
    dataset = CaptureDataset(capture.root, downsample=64)
    assert len(dataset) == 8 and not dataset.construction_problems
    assert dataset.reader.member_name(capture.image_zip(first), dataset.reader.frames[0]) == f"decoder/image/{names[0]}"
    notes = {problem.archive: problem for problem in dataset.archive_problems}
    assert set(notes) == {str(capture.image_zip(first)), str(capture.image_zip(second)), str(capture.texture_zip)}
    assert all(problem.frames_lost == 0 and problem.camera is None for problem in notes.values())
    assert f"members are named 'decoder/image/cam{first}/NNNNNN.avif', not 'cam{first}/NNNNNN.avif'" in str(
        notes[str(capture.image_zip(first))])
    for index in range(len(dataset)):
        assert dataset[index]["skipped"] == ""


def _repack(archive: Path, rename) -> None:
    with zipfile.ZipFile(archive) as source:
        members = [(name, source.read(name)) for name in source.namelist()]
    with zipfile.ZipFile(archive, "w") as target:
        for name, data in members:
            target.writestr(rename(name), data)


def test_archive_problems_count_frames_and_are_summarised_once(capture):
    from ava.data.bad_data import summarise_archive_problems

    first, _ = _camera_ids(capture)
    with zipfile.ZipFile(capture.vertices_zip) as archive:
        dropped_mesh = archive.namelist()[1]
    _rewrite(capture.vertices_zip, lambda name, data: None if name == dropped_mesh else data)
    with zipfile.ZipFile(capture.image_zip(first)) as archive:
        dropped_images = archive.namelist()[2:4]
    _rewrite(capture.image_zip(first), lambda name, data: None if name in dropped_images else data)
    dataset = CaptureDataset(capture.root, downsample=64)
    again = CaptureDataset(capture.root, downsample=64, cameras=[first])  # e.g. the held-out cameras
    lines = summarise_archive_problems(dataset.archive_problems + again.archive_problems)
    assert lines == [
        f"{capture.vertices_zip}: lacks 1 members listed in frame_list.csv (e.g. {dropped_mesh}) (1 of 4 frames lost)",
        f"{capture.image_zip(first)}: lacks 2 members listed in frame_list.csv (e.g. {dropped_images[0]}) "
        "(2 of 4 frames lost)",
    ]


def test_damaged_ply_headers_are_replaced_in_loader_workers(capture, capsys):
    neutral = CaptureDataset(capture.root, downsample=64).reader.neutral_frame.member
    with zipfile.ZipFile(capture.vertices_zip) as archive:
        damaged = [name for name in archive.namelist() if not name.startswith(neutral)][:2]
    header_damage = {damaged[0]: (b"element vertex ", b"element vertex 31#"),  # the reported case
                     damaged[1]: (b"property float z", b"property float")}
    _rewrite(capture.vertices_zip,
             lambda name, data: data.replace(*header_damage[name], 1) if name in header_damage else data)
    dataset = CaptureDataset(capture.root, downsample=64)
    loader = DataLoader(dataset, batch_size=8, num_workers=1, collate_fn=collate, shuffle=False)
    report = BadDataReport()
    [batch] = list(loader)
    assert batch["image"].shape[0] == 8  # refilled from the good frames
    assert not {f"{int(frame):06d}.ply" for frame in batch["frameid"]} & set(damaged)
    report.update(batch)
    assert report.end_epoch(0) >= 4  # two frames, two cameras each (a replacement may hit one too)
    err = capsys.readouterr().err
    for name in damaged:
        assert err.count(f"{capture.vertices_zip}/{name}") == 1
    assert "element NAME COUNT" in err and "property TYPE NAME" in err


def test_cameras_must_face_the_head_of_the_capture(capture):
    import json

    import numpy as np

    from ava.data.calibration import calibration_document
    from ava.data.formats import format_head_pose, parse_head_pose

    # Move the whole world 3 m: the world origin is then behind some cameras, the head is not.
    shift = np.array([0.0, 3000.0, 0.0])
    cameras = read_calibration(capture.calibration, in_front_of=None)
    moved = [dataclasses.replace(camera, translation=camera.translation - camera.rotation @ shift)
             for camera in cameras]
    capture.calibration.write_text(json.dumps(calibration_document(moved)))

    def move_head(name, data, offset):
        pose = parse_head_pose(data).astype(np.float64)
        pose[:, 3] += offset
        return format_head_pose(pose)

    with pytest.raises(UserError, match="the world origin is not in front of camera"):
        read_calibration(capture.calibration)
    with pytest.raises(UserError, match=r"camera_calibration.json: the head \(frame \d+\) is not in front of camera"):
        CaptureDataset(capture.root, downsample=64)  # head poses not moved yet: the head is 3 m away
    _rewrite(capture.head_pose_zip, lambda name, data: move_head(name, data, shift))
    dataset = CaptureDataset(capture.root, downsample=64)
    sample = dataset[0]
    assert torch.isfinite(sample["campos"]).all()


def test_no_neutral_frame(capture):
    text = capture.frame_list.read_text().replace("EXP_neutral_peak", "EXP_other")
    capture.frame_list.write_text(text)
    with pytest.raises(UserError, match="no EXP_neutral_peak frame"):
        CaptureDataset(capture.root, downsample=64)


def test_neutral_frame_is_the_first_usable_lexicographic_one(capture):
    rows = capture.frame_list.read_text().splitlines()
    neutral = [row.split(",")[1] for row in rows[1:] if row.startswith("EXP_neutral_peak")]
    assert len(neutral) == 1
    # Make two more frames neutral; the lexicographically first one wins, unless its texture is gone.
    others = [row.split(",")[1] for row in rows[1:3 + 1] if not row.startswith("EXP_neutral_peak")][:2]
    relabelled = [row.replace(row.split(",")[0], "EXP_neutral_peak") if row.split(",")[1] in others else row
                  for row in rows]
    capture.frame_list.write_text("\n".join(relabelled) + "\n")
    candidates = sorted(neutral + others)
    assert CaptureDataset(capture.root, downsample=64).reader.neutral_frame.frame_id == candidates[0]
    _rewrite(capture.texture_zip, lambda n, d: None if n == f"color/{int(candidates[0]):06d}.avif" else d)
    assert CaptureDataset(capture.root, downsample=64).reader.neutral_frame.frame_id == candidates[1]


def test_multi_capture_indices_and_downsample(pristine):
    captures = read_ids_csv(pristine / "ids.csv")
    dataset = MultiCaptureDataset(pristine, list(reversed(captures)), downsample=128)
    assert dataset.identity_index == {capture: i for i, capture in enumerate(reversed(captures))}
    all_cameras = sorted({c for capture in captures for c in _camera_ids(CaptureLayout(pristine / capture.folder))})
    assert dataset.camera_ids == all_cameras
    sample = dataset[-1]
    assert sample["idindex"] == 1 and dataset.camera_ids[sample["camindex"]] == sample["cameraid"]
    assert sample["image"].shape == (3, 32, 20)  # resized from the stored 64x41
    calibration = {c.camera_id: c for c in read_calibration(CaptureLayout(pristine / captures[0].folder).calibration)}
    assert torch.allclose(sample["focal"].double(), torch.from_numpy(calibration[sample["cameraid"]].focal / 128))
    with pytest.raises(UserError, match="does not exist"):
        MultiCaptureDataset(pristine / "nowhere", captures)


def test_multi_capture_statistics_from_the_files(pristine):
    import numpy as np

    from ava.data.formats import decode_image

    captures = read_ids_csv(pristine / "ids.csv")
    dataset = MultiCaptureDataset(pristine, captures, downsample=64)
    layouts = [CaptureLayout(pristine / c.folder) for c in captures]
    texmeans = np.stack([decode_image(l.texture_mean.read_bytes()).transpose(2, 0, 1) for l in layouts]).astype(float)
    vertmeans = np.stack([np.load(l.vertices_mean) for l in layouts]).astype(float)
    vertvars = [float(l.vertices_variance.read_text()) for l in layouts]
    texmean, vertmean = texmeans.mean(0), vertmeans.mean(0)
    assert dataset.stats.texstd == pytest.approx(np.sqrt(((texmeans - texmean) ** 2).sum() / (texmean.size * 2)))
    assert dataset.stats.vertstd == pytest.approx(
        np.sqrt(((vertmeans - vertmean) ** 2).sum() / (vertmean.size * 2) + np.mean(vertvars)))
    np.testing.assert_allclose(dataset.stats.texmean, texmean, rtol=1e-6)
    single = CaptureDataset(layouts[0].root, downsample=64)  # alone: its own means and variances
    assert single.stats.texstd == pytest.approx(np.sqrt(float(layouts[0].texture_variance.read_text())))


def test_segmentation_and_encoder_parts(capture):
    import io

    import numpy as np
    from PIL import Image

    from ava.data.headset_capture import EncoderCapture
    from ava.data.layout import ENCODER_CAMERAS

    frames = [row.split(",")[1] for row in capture.frame_list.read_text().splitlines()[1:]]
    labels = np.zeros((64, 41), np.uint8)
    labels[20:30, 10:20] = 6  # upper lip
    for camera in _camera_ids(capture):
        capture.segmentation_zip(camera).parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(capture.segmentation_zip(camera), "w") as archive:
            for frame in frames:
                buffer = io.BytesIO()
                Image.fromarray(labels).save(buffer, format="PNG")
                archive.writestr(f"cam{camera}/{int(frame):06d}.png", buffer.getvalue())
    dataset = CaptureDataset(capture.root, downsample=128, with_segmentation=True)
    sample = dataset[0]
    assert sample["segmentation"].shape == (1, 32, 20) and sample["segmentation"].dtype == torch.uint8
    assert set(sample["segmentation"].unique().tolist()) == {0, 6}  # nearest resize keeps class ids

    capture.encoder_frame_list.parent.mkdir(parents=True, exist_ok=True)
    capture.encoder_frame_list.write_text("seg_id,frame_id\nEXP_free_face,17\nEXP_free_face,18\n")
    for index, camera in enumerate(ENCODER_CAMERAS):
        capture.encoder_zip(camera).parent.mkdir(parents=True, exist_ok=True)
        prefix = "" if index % 2 else f"{camera}/"  # either naming is recognised
        with zipfile.ZipFile(capture.encoder_zip(camera), "w") as archive:
            for frame in (17, 18):
                buffer = io.BytesIO()
                Image.fromarray(np.full((40, 30), frame * 10 + index, np.uint8)).save(buffer, format="AVIF", quality=100)
                archive.writestr(f"{prefix}{frame:06d}.avif", buffer.getvalue())
    encoder = EncoderCapture(capture.root)
    assert encoder.member(ENCODER_CAMERAS[0], "17") == f"{ENCODER_CAMERAS[0]}/000017.avif"
    assert encoder.member(ENCODER_CAMERAS[1], "17") == "000017.avif"
    image = encoder.image(ENCODER_CAMERAS[2], "18")
    assert image.shape[:2] == (40, 30) and abs(float(image.mean()) - 182) < 3
