"""`ava synth`: determinism, the real layout read back by the dataset, and exact tiled rendering."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ava.data.calibration import read_calibration
from ava.data.dataset import MultiCaptureDataset
from ava.data.formats import decode_image, parse_ply_vertices
from ava.data.ids import read_ids_csv
from ava.data.layout import CaptureLayout
from ava.synth import SynthConfig, generate
from ava.synth.pipeline import plan_subjects
from ava.errors import UserError

TINY = dict(n_ids=2, n_frames=3, n_cams=2, downsample=64, texture_size=64, prims_per_side=16, voxels=4,
            mesh_columns=24, mesh_rows=16, workers=1)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(**TINY), progress=False)
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_layout_and_determinism(dataset_dir, tmp_path):
    captures = read_ids_csv(dataset_dir / "ids.csv")
    assert len(captures) == 2 and [c.sid for c in captures] == sorted(c.sid for c in captures)
    assert (dataset_dir / "face_topology.obj").is_file()
    layout = CaptureLayout(dataset_dir / captures[0].folder)
    for path in layout.required_files():
        assert path.is_file(), path
    cameras = read_calibration(layout.calibration)
    with zipfile.ZipFile(layout.image_zip(cameras[0].camera_id)) as archive:
        names = archive.namelist()
        assert all(n.startswith(f"cam{cameras[0].camera_id}/") and n.endswith(".avif") for n in names)
        image = decode_image(archive.read(names[0]))
    assert image.shape == (4096 // 64, 2668 // 64, 3)
    for camera in cameras:  # full-resolution sensor model about 1 m from the head
        assert (camera.width, camera.height) == (2668, 4096)
        assert 800 < np.linalg.norm(camera.position) < 1300
    frames = (layout.frame_list).read_text().splitlines()
    assert frames[0] == "seg_id,frame_id" and frames[1].startswith("EXP_neutral_peak,")
    again = tmp_path / "again"
    generate(again, SynthConfig(**TINY), progress=False)
    assert _digest(again) == _digest(dataset_dir)


def test_rerun_is_a_no_op_and_other_settings_are_refused(dataset_dir):
    before = _digest(dataset_dir)
    generate(dataset_dir, SynthConfig(**TINY), progress=False)  # same settings: regenerates identically
    assert _digest(dataset_dir) == before
    with pytest.raises(UserError, match="other settings"):
        generate(dataset_dir, SynthConfig(**{**TINY, "seed": 5}), progress=False)


def test_an_interrupted_run_is_finished_by_the_next(dataset_dir, tmp_path):
    """Ctrl-C during `ava synth` (or during `ava train`'s first demo-data generation) leaves some
    capture folders and no manifest; the same command again must finish the set, not refuse it."""
    import shutil

    before = _digest(dataset_dir)
    out = tmp_path / "interrupted"
    shutil.copytree(dataset_dir, out)
    (out / "synth_config.json").unlink()
    (out / "ids.csv").unlink()
    second = read_ids_csv(dataset_dir / "ids.csv")[1].folder
    (out / second).rename(out / f".{second}.partial")  # the capture being written when it stopped
    generate(out, SynthConfig(**TINY), progress=False)
    assert _digest(out) == before and not (out / f".{second}.partial").exists()
    # Anything else in the folder is not ours to replace.
    (out / "synth_config.json").unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no synthetic dataset"):
        generate(out, SynthConfig(**TINY), progress=False)


def test_progress_goes_to_stderr(tmp_path, capsys):
    generate(tmp_path / "out", SynthConfig(**{**TINY, "n_ids": 1, "n_frames": 1}), progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "images" in captured.err


def test_round_trip_sample(dataset_dir):
    captures = read_ids_csv(dataset_dir / "ids.csv")
    dataset = MultiCaptureDataset(dataset_dir, captures, downsample=64, with_keypoints=True)
    assert len(dataset) == 2 * 3 * 2
    plans = plan_subjects(SynthConfig(**TINY))
    stats = dataset.stats
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["skipped"] == ""
        assert sample["image"].shape == (3, 64, 41) and sample["image"].dtype == torch.float32
        assert sample["avgtex"].shape == (3, 64, 64) and sample["verts"].shape == (24 * 17, 3)
        assert sample["pixelcoords"].shape == (64, 41, 2)
        capture_index, _ = dataset.locate(index)
        assert sample["idindex"] == capture_index
        assert dataset.camera_ids[sample["camindex"]] == sample["cameraid"]
        layout = CaptureLayout(dataset_dir / captures[capture_index].folder)
        frame = f"{int(sample['frameid']):06d}"
        with zipfile.ZipFile(layout.vertices_zip) as archive:
            ply = parse_ply_vertices(archive.read(f"{frame}.ply"))
        verts_mm = sample["verts"] * stats.vertstd + torch.from_numpy(stats.vertmean)
        assert torch.allclose(verts_mm, torch.from_numpy(ply), atol=1e-3)
        with zipfile.ZipFile(layout.texture_zip) as archive:
            texture = decode_image(archive.read(f"color/{frame}.avif"))
        restored = sample["avgtex"] * stats.texstd + torch.from_numpy(stats.texmean)
        assert torch.allclose(restored, torch.from_numpy(np.array(texture)).permute(2, 0, 1).float(), atol=1e-3)
        # The mesh point nearest the camera is visible: projected with the sample's camera it
        # lands on the rendered head, whose colour differs from the camera's backdrop.
        camera_points = (verts_mm - sample["campos"]) @ sample["camrot"].T
        nearest = camera_points[camera_points[:, 2].argmin()]
        x, y = (nearest[:2] / nearest[2] * sample["focal"] + sample["princpt"]).round().long().tolist()
        assert 0 <= x < 41 and 0 <= y < 64
        plan = plans[capture_index]
        camera_position = [c.camera_id for c in plan.cameras].index(sample["cameraid"])
        top, bottom = plan.backgrounds[camera_position]
        backdrop = top * (1 - y / 63) + bottom * (y / 63)
        assert np.abs(sample["image"][:, y, x].numpy() - backdrop).max() > 12
        corner = sample["image"][:, 0, 0].numpy()
        assert np.abs(corner - top * (1 - 0.12)).max() < 12  # far from the head: the backdrop
        # Keypoints are mesh vertices moved into the world frame by the head pose.
        pose = sample["headpose"].double()
        valid = sample["keypoints3d_valid"]
        world = sample["keypoints3d"][valid, :3].double()
        head = (world - pose[:, 3]) @ pose[:, :3]
        distances = torch.cdist(head.float(), verts_mm)
        assert distances.min(dim=1).values.max() < 0.1  # float32 world coordinates near 1 m


def _tiled_and_full(config: SynthConfig, subject: int, frame: int, downsample: int):
    """One camera's image of one frame rendered tile by tile (as `ava synth` does) and by the plain
    full raymarch of every ray against every primitive."""
    from ava.data.calibration import camera_in_head_frame
    from ava.data.dataset import pixel_coordinates
    from ava.kernels import compute_raydirs, mvp_raymarch
    from ava.synth.appearance import paint_texture
    from ava.synth.pipeline import _surface_and_maps
    from ava.synth.render import RenderSettings, View, build_primitives, render_views

    plan = plan_subjects(config)[subject]
    surface, uvmaps, angles = _surface_and_maps(config)
    expression = plan.expressions[frame]
    closed_vertices, closed_faces = surface.closed_mesh(surface.vertices(plan.identity, expression))
    verts, faces = torch.from_numpy(closed_vertices), torch.from_numpy(closed_faces)
    settings = RenderSettings(prims_per_side=config.prims_per_side, voxels=config.voxels, tile=8, tiles_per_call=3)
    primitives = build_primitives(verts, paint_texture(plan.identity, expression, *angles), uvmaps, settings, faces)
    camera = plan.cameras[0]
    camrot, campos = camera_in_head_frame(camera, plan.poses[frame])
    view = View(torch.from_numpy(camrot).float(), torch.from_numpy(campos).float(),
                torch.from_numpy(camera.focal / downsample).float(),
                torch.from_numpy(camera.principal_point / downsample).float())
    height, width = 4096 // downsample, 2668 // downsample
    tiled = render_views(primitives, [view], height, width, verts, faces, settings)
    raypos, raydir, tminmax = compute_raydirs(view.campos[None], view.camrot[None], view.focal[None],
                                              view.princpt[None], pixel_coordinates(height, width)[None], 256.0)
    full = mvp_raymarch(raypos, raydir, settings.stepsize, tminmax, primitives.primpos[None],
                        primitives.primrot[None], primitives.primscale[None], primitives.template[None],
                        backend="torch")
    return tiled, full


def test_tiled_rendering_equals_the_full_raymarch():
    tiled, full = _tiled_and_full(SynthConfig(**TINY), subject=1, frame=1, downsample=48)
    assert (full[..., 3] > 0.99).float().mean() > 0.1  # the head is there
    torch.testing.assert_close(tiled, full, atol=1e-3, rtol=1e-4)


def test_cli(tmp_path, capsys):
    from ava.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--n-ids", "--n-frames", "--n-cams", "--seed", "--texture-size", "--downsample", "--topology"):
        assert flag in help_text
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "-o", str(tmp_path / "bad"), "--texture-size", "100"])
    assert exit_info.value.code == 2
    assert "power of two" in capsys.readouterr().err
    # Two texels per primitive passed the check once and then failed inside primitive placement.
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "-o", str(tmp_path / "bad"), "--texture-size", "64", "--prims-per-side", "32"])
    assert exit_info.value.code == 2
    assert "at least 4" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "-o", str(tmp_path / "bad"), "--topology", str(tmp_path / "head.obj")])
    assert exit_info.value.code == 2
    assert "no such OBJ" in capsys.readouterr().err
