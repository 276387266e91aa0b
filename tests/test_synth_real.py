"""`ava synth` as a stand-in for real captures: the fixed dome of camera ids, and heads built on the
real Ava-256 face topology (tests that need its OBJ skip without it; see conftest.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ava.data.dataset import MultiCaptureDataset
from ava.data.ids import read_ids_csv
from ava.errors import UserError
from ava.synth import SynthConfig, generate
from ava.synth.dome import DOME_CAMERA_IDS, FRONTAL_CAMERA_IDS, camera_priority, dome_cameras, select_cameras
from ava.synth.expressions import CONTROL_RANGES, CONTROLS, Expression
from ava.synth.head import EYE_PHI, EYE_THETA, MOUTH_THETA, Identity
from ava.synth.pipeline import plan_subjects
from ava.synth.surface import head_surface
from ava.synth.template import LANDMARK_UVS
from tests.test_synth import _tiled_and_full

TINY_REAL = dict(n_ids=2, n_frames=2, n_cams=6, downsample=64, texture_size=64, prims_per_side=16, voxels=4,
                 workers=1)


def _face_angle(camera, pose) -> float:
    """Degrees between the camera's line of sight to the head and the head's face direction reversed."""
    face = pose[:, :3] @ np.array([0.0, 0.0, 1.0])
    towards_camera = camera.position - pose[:, 3]
    return math.degrees(math.acos(face @ towards_camera / np.linalg.norm(towards_camera)))


def test_the_dome_is_one_fixed_set_of_real_style_ids():
    ids = [camera.camera_id for camera in dome_cameras()]
    assert ids == list(DOME_CAMERA_IDS) == sorted(set(ids)) and len(ids) == 96
    assert all(len(i) == 6 and i.isdigit() and "400000" <= i <= "402999" for i in ids)
    priority = camera_priority()
    assert sorted(priority) == ids and priority[:4] == FRONTAL_CAMERA_IDS
    # The frontal four are the cameras closest to where a neutral head looks (world -y).
    angles = {camera.camera_id: math.degrees(math.acos(-camera.position[1] / np.linalg.norm(camera.position)))
              for camera in dome_cameras()}
    assert sorted(angles, key=angles.get)[:4] == sorted(FRONTAL_CAMERA_IDS, key=angles.get)
    assert max(angles[i] for i in FRONTAL_CAMERA_IDS) < 20
    # --n-cams takes a prefix: more cameras add to fewer, and the second batch spreads out.
    assert [c.camera_id for c in select_cameras(10)][:6] == [c.camera_id for c in select_cameras(6)]
    assert min(angles[i] for i in priority[4:8]) > 60


def test_captures_share_the_dome_and_miss_a_few_cameras():
    config = SynthConfig(n_ids=8, n_cams=24)
    plans = plan_subjects(config)
    selected = set(camera_priority()[:24])
    per_capture = [[camera.camera_id for camera in plan.cameras] for plan in plans]
    assert [[c.camera_id for c in plan.cameras] for plan in plan_subjects(config)] == per_capture  # deterministic
    for plan, cameras in zip(plans, per_capture):
        assert cameras == sorted(cameras) and set(cameras) <= selected and set(FRONTAL_CAMERA_IDS) <= set(cameras)
        assert len(cameras) >= 24 - math.ceil(20 / 8)
        frontal = next(c for c in plan.cameras if c.camera_id == "401031")
        assert _face_angle(frontal, plan.poses[0]) < 25  # straight in front of the face
    assert any(len(cameras) < 24 for cameras in per_capture)  # some capture misses cameras ...
    assert len(set(map(tuple, per_capture))) > 1  # ... and not all the same ones
    # A camera id stands at one place in every capture (up to a fresh calibration's changes).
    positions = {}
    for plan in plans:
        for camera in plan.cameras:
            positions.setdefault(camera.camera_id, []).append(camera.position)
    assert max(np.ptp(np.stack(p), axis=0).max() for p in positions.values()) < 5.0


def test_too_many_cameras_is_a_user_error():
    with pytest.raises(UserError, match="at most 96"):
        SynthConfig(n_cams=97).check()


def test_bad_topologies_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such OBJ"):
        head_surface(str(tmp_path / "missing.obj"))
    triangle = tmp_path / "triangle.obj"
    triangle.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 0.1 0\nvt 0 0.1\nf 1/1 2/2 3/3\n")
    with pytest.raises(UserError, match="landmark UVs"):
        head_surface(str(triangle))


@pytest.fixture(scope="module")
def real_surface(original_topology):
    return head_surface(str(original_topology))


def test_the_template_sits_in_the_head_frame(real_surface):
    from ava.synth.template import uv_surface_point

    topology = real_surface.topology
    positions = real_surface.template.positions
    assert real_surface.num_verts == 7306 and positions.shape == (7306, 3)
    assert np.abs(positions).max() < 256  # inside the decoder's volume
    landmarks = {name: uv_surface_point(positions, topology.uvs.double().numpy(), topology.faces.numpy(),
                                        topology.face_uvs.numpy(), uv) for name, uv in LANDMARK_UVS.items()}
    eye_a, eye_b, mouth = landmarks["eye_a"], landmarks["eye_b"], landmarks["mouth"]
    assert eye_a[0] == pytest.approx(-eye_b[0]) and 25 < abs(eye_a[0]) < 45  # symmetric about x = 0
    assert eye_a[1:] == pytest.approx(eye_b[1:]) and mouth[1] < eye_a[1] - 40  # mouth under the eyes
    assert eye_a[2] > 50 and mouth[2] > 50  # the face looks along +z
    used = real_surface.used
    assert positions[used, 1].max() > eye_a[1] + 80 and positions[used, 2].min() < -80  # crown above, back behind
    # The warp puts the template's features at the procedural head's angles.
    for name, point in landmarks.items():
        theta, phi = real_surface.template.angles(point)
        assert theta == pytest.approx(MOUTH_THETA if name == "mouth" else EYE_THETA, abs=1e-6)
        assert abs(phi) == pytest.approx(0.0 if name == "mouth" else EYE_PHI, abs=0.02 if name == "mouth" else 1e-6)
    # Outward winding: the signed volume about the centre is positive.
    corners = positions[real_surface.faces]
    assert np.einsum("fi,fi->f", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() > 0


def test_template_deformations(real_surface):
    identity = Identity.sample(np.random.default_rng(3))
    average = identity.with_average_shape()
    np.testing.assert_allclose(real_surface.vertices(average, Expression()), real_surface.template.positions,
                               atol=1e-3)  # the average identity, neutral, is the template itself
    neutral = real_surface.vertices(identity, Expression())
    assert np.abs(neutral - real_surface.template.positions).max() > 3.0  # identities differ
    jaw = real_surface.vertices(identity, Expression(jaw_open=1.0)) - neutral
    theta, phi = real_surface.theta, real_surface.phi
    chin = (theta < MOUTH_THETA - 0.05 * np.pi) & (theta > 0.25 * np.pi) & (np.cos(phi) > 0.9)
    crown = theta > 0.8 * np.pi
    assert jaw[chin, 1].mean() < -5.0 and np.abs(jaw[crown]).max() < 1e-6  # the jaw drops, the crown stays
    for name in CONTROLS:  # every control of the synthetic world moves the face topology too
        value = CONTROL_RANGES[name][1]
        moved = np.linalg.norm(real_surface.vertices(identity, Expression(**{name: value})) - neutral, axis=1)
        assert moved.max() > 0.5, name  # mm


def test_texture_angles_follow_the_uv_layout(real_surface):
    from ava.nn.uvmap import build_uv_maps

    uvmaps = build_uv_maps(real_surface.topology, 256, use_cache=False)
    theta, phi = real_surface.texel_angles(uvmaps)
    for name, (u, v) in LANDMARK_UVS.items():
        row, column = int((1 - v) * 256), int(u * 256)  # flipped-UV layout: row 0 at v ~ 1
        expected = (MOUTH_THETA, 0.0) if name == "mouth" else (EYE_THETA, EYE_PHI)
        assert theta[row, column] == pytest.approx(expected[0], abs=0.02)  # half a texel off the landmark
        assert abs(phi[row, column]) == pytest.approx(expected[1], abs=0.03)


def test_tiled_rendering_is_exact_on_the_real_topology(original_topology):
    config = SynthConfig(**{**TINY_REAL, "topology": str(original_topology)})
    tiled, full = _tiled_and_full(config, subject=0, frame=1, downsample=48)
    assert (full[..., 3] > 0.99).float().mean() > 0.1
    torch.testing.assert_close(tiled, full, atol=1e-3, rtol=1e-4)


@pytest.fixture(scope="module")
def real_dataset(original_topology, tmp_path_factory):
    """A tiny set on `--topology original`, the OBJ coming from a local copy through $AVA_TOPOLOGY_URL."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVA_CACHE_DIR", str(cache))
        patch.setenv("AVA_TOPOLOGY_URL", str(original_topology))
        out = tmp_path_factory.mktemp("real")
        generate(out, SynthConfig(**TINY_REAL, topology="original"), progress=False)
    return out


def test_a_real_topology_set_reads_like_the_release(real_dataset, original_topology):
    from ava.nn.topology import ORIGINAL_TOPOLOGY_SHA256

    assert (real_dataset / "face_topology.obj").read_bytes() == original_topology.read_bytes()
    manifest = json.loads((real_dataset / "synth_config.json").read_text())
    assert manifest["config"]["topology"] == "original" and manifest["topology_sha256"] == ORIGINAL_TOPOLOGY_SHA256
    captures = read_ids_csv(real_dataset / "ids.csv")
    dataset = MultiCaptureDataset(real_dataset, captures, downsample=64)
    assert set(FRONTAL_CAMERA_IDS) <= set(dataset.camera_ids)
    sample = dataset[0]
    assert sample["verts"].shape == (7306, 3) and sample["avgtex"].shape == (3, 64, 64)
    assert dataset.stats.vertmean.shape == (7306, 3)
    # The head fills part of the frontal view: pixels far from the backdrop's colours.
    index = next(i for i in range(len(dataset)) if dataset.datasets[0].sample_ids(i)[1] == "401031")
    image = dataset[index]["image"]
    centre = image[:, 20:44, 10:31].reshape(3, -1)
    corner = image[:, :6, :6].reshape(3, -1).mean(dim=1, keepdim=True)
    assert ((centre - corner).abs().max(dim=0).values > 25).float().mean() > 0.5
