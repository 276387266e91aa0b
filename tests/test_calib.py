"""camera_calibration.json in the real schema (K and T transposed) and the head-frame camera."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ava.data.calibration import camera_in_head_frame, parse_calibration, rotation_about_axis
from ava.errors import UserError

# Written by hand in the release's schema: K = [[fx,0,0],[0,fy,0],[cx,cy,1]] (transposed) and T the
# transpose of [[R, t],[0,0,0,1]], here R a 90 degree turn about y and t = (10, -20, 1400).
CALIBRATION = """{"KRT": [
 {"cameraId": "400940",
  "K": [[10355.0, 0.0, 0.0], [0.0, 10350.0, 0.0], [1413.5, 1784.25, 1.0]],
  "T": [[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [10.0, -20.0, 1400.0, 1.0]],
  "distortion": [0.1, -0.2, 0.001, 0.002],
  "distortionModel": "RadialAndTangential", "projectionModel": "Pinhole"},
 {"cameraId": "401031",
  "K": [[9000.0, 0.0, 0.0], [0.0, 9000.0, 0.0], [1334.0, 2048.0, 1.0]],
  "T": [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1000.0, 1.0]],
  "distortion": [0, 0, 0, 0],
  "distortionModel": "RadialAndTangential", "projectionModel": "Pinhole"}
]}"""


def test_parse_real_schema():
    first, second = parse_calibration(CALIBRATION)
    assert [first.camera_id, second.camera_id] == ["400940", "401031"]
    assert np.allclose(first.intrinsics, [[10355, 0, 1413.5], [0, 10350, 1784.25], [0, 0, 1]])
    assert np.allclose(first.rotation, [[0, 0, -1], [0, 1, 0], [1, 0, 0]])
    assert np.allclose(first.translation, [10, -20, 1400])
    assert np.allclose(first.position, -first.rotation.T @ first.translation)
    assert np.allclose(first.distortion, [0.1, -0.2, 0.001, 0.002, 0.0])
    assert (first.width, first.height) == (2668, 4096)
    assert np.allclose(first.focal, [10355, 10350]) and np.allclose(first.principal_point, [1413.5, 1784.25])


def test_head_frame_camera_projects_like_the_world_camera():
    camera = parse_calibration(CALIBRATION)[0]
    head_rotation = rotation_about_axis([0.3, 1.0, -0.2], math.radians(25))
    headpose = np.concatenate([head_rotation, [[15.0], [-40.0], [30.0]]], axis=1)
    camrot, campos = camera_in_head_frame(camera, headpose)
    assert np.allclose(camrot, camera.rotation @ head_rotation)
    assert np.allclose(campos, head_rotation.T @ (camera.position - headpose[:, 3]))
    rng = np.random.default_rng(0)
    for point_head in rng.uniform(-150, 150, (5, 3)):
        point_world = head_rotation @ point_head + headpose[:, 3]
        in_world_camera = camera.rotation @ point_world + camera.translation
        in_head_camera = camrot @ (point_head - campos)
        assert np.allclose(in_world_camera, in_head_camera)


def test_bad_calibrations_are_user_errors():
    document = json.loads(CALIBRATION)
    document["KRT"][0]["T"][0][0] = 5.0  # no longer a rotation
    with pytest.raises(UserError, match="400940 T does not hold a rotation"):
        parse_calibration(json.dumps(document))
    with pytest.raises(UserError, match="no 'KRT'"):
        parse_calibration('{"cameras": []}')
    with pytest.raises(UserError, match="not valid JSON"):
        parse_calibration("{")
    document = json.loads(CALIBRATION)
    document["KRT"][1]["cameraId"] = "400940"
    with pytest.raises(UserError, match="twice"):
        parse_calibration(json.dumps(document))


def _row_major(document: dict, camera: int, which: str) -> dict:
    """The document with one camera's K or T written the ordinary way (untransposed)."""
    document["KRT"][camera][which] = np.array(document["KRT"][camera][which]).T.tolist()
    return document


@pytest.mark.parametrize("which, row", [("K", r"\[1413.5, 1784.25, 1\]"), ("T", r"\[10, -20, 1400, 1\]")])
def test_untransposed_k_or_t_is_named_with_file_and_camera(tmp_path, which, row):
    from ava.data.calibration import read_calibration

    path = tmp_path / "camera_calibration.json"
    path.write_text(json.dumps(_row_major(json.loads(CALIBRATION), 0, which)))
    with pytest.raises(UserError, match=f"^{path}: camera 400940: {which}'s last row is {row} after the "
                                        f"transpose.*is {which} stored untransposed\\?"):
        read_calibration(path)


def test_cameras_must_have_the_head_in_front():
    from ava.data.calibration import check_in_front

    # T untransposed with t = 0 passes the row checks (R^T is a rotation) but sits on the origin.
    document = _row_major(json.loads(CALIBRATION), 1, "T")
    document["KRT"][1]["T"][2][3] = 0.0
    with pytest.raises(UserError, match="the world origin is not in front of camera 401031 \\(depth 0 mm\\)"):
        parse_calibration(json.dumps(document))
    document = json.loads(CALIBRATION)
    document["KRT"][0]["T"][3][2] = -1400.0  # looking away from the origin
    with pytest.raises(UserError, match="not in front of camera 400940 \\(depth -1400 mm\\).*untransposed"):
        parse_calibration(json.dumps(document))
    cameras = parse_calibration(json.dumps(document), in_front_of=None)  # checked later, with a head pose
    head = np.array([1500.0, 0.0, 0.0])  # camera 400940 sees it at depth x + t_z = 100 mm
    assert (cameras[0].rotation @ head + cameras[0].translation)[2] > 0
    with pytest.raises(UserError, match="the head is not in front of camera 401031"):
        check_in_front(cameras, head + [0, 0, -3000], "calib.json", "the head")
    check_in_front(cameras[:1], head, "calib.json", "the head")


def test_synthetic_domes_pass_the_checks():
    from ava.data.calibration import calibration_document
    from ava.synth.dome import base_head_pose, capture_cameras, select_cameras

    rng = np.random.default_rng(3)
    pose = base_head_pose(rng)
    cameras = capture_cameras(select_cameras(96), rng)  # the whole dome
    again = parse_calibration(json.dumps(calibration_document(cameras)), in_front_of=pose[:, 3])
    assert [camera.camera_id for camera in again] == [camera.camera_id for camera in cameras]
    assert np.allclose(again[0].intrinsics, cameras[0].intrinsics)
