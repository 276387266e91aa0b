"""`camera_calibration.json`: the dome cameras of one capture (docs/data-layout.md).

Schema: `{"KRT": [camera, ...]}`. Each camera stores `K` (3x3) and `T` (4x4) **transposed**:
`intrinsics = K.T` and the world->camera matrix is `T.T = [[R, t], [0, 0, 0, 1]]`, so a camera maps
`x_cam = R x_world + t`. Distortion is parsed but, as in the original, never applied.

A calibration written the ordinary way (K and [[R, t], [0, 0, 0, 1]] row-major) would parse into
plausible-looking but wrong cameras, so the parser checks the rows that the transpose must leave
(K's last row [0, 0, 1], T's [0, 0, 0, 1]) and that the head sits in front of every camera.

The original hard-codes the sensor size (2668 x 4096, W x H). A calibration may carry optional
per-camera `width` and `height` fields (synthetic captures write them); without them the Ava-256
dome's sensor size is assumed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ava.errors import UserError
from ava.files import read_text

# Sensor of the Ava-256 dome cameras (portrait); the original loader hard-codes these.
DOME_SENSOR_WIDTH = 2668
DOME_SENSOR_HEIGHT = 4096


@dataclass(frozen=True)
class Camera:
    """One calibrated camera at full sensor resolution (float64 numpy arrays)."""

    camera_id: str
    intrinsics: np.ndarray  # [3,3] [[fx,0,cx],[0,fy,cy],[0,0,1]]
    rotation: np.ndarray  # [3,3] world -> camera
    translation: np.ndarray  # [3] world -> camera, mm
    distortion: np.ndarray  # [5] k1,k2,p1,p2,k3 (k3 = 0); never applied
    width: int = DOME_SENSOR_WIDTH
    height: int = DOME_SENSOR_HEIGHT

    @property
    def position(self) -> np.ndarray:
        """Camera centre in world coordinates (mm): `-R^T t`."""
        return -self.rotation.T @ self.translation

    @property
    def focal(self) -> np.ndarray:
        """(fx, fy) at full resolution."""
        return np.array([self.intrinsics[0, 0], self.intrinsics[1, 1]])

    @property
    def principal_point(self) -> np.ndarray:
        """(cx, cy) at full resolution."""
        return np.array([self.intrinsics[0, 2], self.intrinsics[1, 2]])


def _matrix(value, shape: tuple[int, int], what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{what} is not a numeric matrix") from None
    if array.shape != shape:
        raise UserError(f"{what} has shape {list(array.shape)}; expected {list(shape)}")
    if not np.all(np.isfinite(array)):
        raise UserError(f"{what} contains non-finite values")
    return array


def _row(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{value:.6g}" for value in values) + "]"


def _parse_camera(entry: dict, source: str, position: int) -> Camera:
    where = f"{source}: camera #{position}"
    if not isinstance(entry, dict):
        raise UserError(f"{where} is not a JSON object")
    for key in ("cameraId", "K", "T"):
        if key not in entry:
            raise UserError(f"{where} has no {key!r} field")
    camera_id = str(entry["cameraId"])
    where = f"{source}: camera {camera_id}"
    intrinsics = _matrix(entry["K"], (3, 3), f"{where} K").T
    world_to_camera = _matrix(entry["T"], (4, 4), f"{where} T").T
    # Stored row-major instead, K's last row would be (cx, cy, 1) and T's (t, 1) after the transpose;
    # R^T is a rotation too, so the rotation check below cannot catch it.
    if not np.allclose(intrinsics[2], [0.0, 0.0, 1.0], atol=1e-9):
        raise UserError(f"{where}: K's last row is {_row(intrinsics[2])} after the transpose, not [0, 0, 1]; "
                        "is K stored untransposed? The release stores K transposed, [[fx,0,0],[0,fy,0],[cx,cy,1]]")
    if not np.allclose(world_to_camera[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise UserError(f"{where}: T's last row is {_row(world_to_camera[3])} after the transpose, not [0, 0, 0, 1]; "
                        "is T stored untransposed? The release stores the transpose of [[R, t], [0, 0, 0, 1]]")
    rotation = world_to_camera[:3, :3]
    translation = world_to_camera[:3, 3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4) or np.linalg.det(rotation) < 0:
        raise UserError(f"{where} T does not hold a rotation (is it stored transposed, as expected?)")
    if intrinsics[0, 0] <= 0 or intrinsics[1, 1] <= 0:
        raise UserError(f"{where} K has non-positive focal lengths (is it stored transposed?)")
    distortion = np.zeros(5)
    raw_distortion = np.asarray(entry.get("distortion", [0, 0, 0, 0]), dtype=np.float64).ravel()
    distortion[: min(5, raw_distortion.size)] = raw_distortion[:5]
    width = int(entry.get("width", DOME_SENSOR_WIDTH))
    height = int(entry.get("height", DOME_SENSOR_HEIGHT))
    if width <= 0 or height <= 0:
        raise UserError(f"{where} has a non-positive sensor size {width}x{height}")
    return Camera(camera_id, intrinsics, rotation, translation, distortion, width, height)


WORLD_ORIGIN = (0.0, 0.0, 0.0)


def check_in_front(cameras: list[Camera], point, source: str, what: str = "the world origin") -> None:
    """Raises UserError unless `point` (world, mm) has a positive depth in every camera.

    A dome surrounds the head, so the head is in front of every camera; a camera with the head
    behind it has its extrinsics stored untransposed or inverted (camera -> world).
    """
    point = np.asarray(point, dtype=np.float64).reshape(3)
    behind = [(camera.camera_id, float((camera.rotation @ point + camera.translation)[2])) for camera in cameras]
    behind = [(camera_id, depth) for camera_id, depth in behind if not depth > 0]
    if behind:
        listed = ", ".join(f"{camera_id} (depth {depth:.4g} mm)" for camera_id, depth in behind[:4])
        more = f" and {len(behind) - 4} more" if len(behind) > 4 else ""
        raise UserError(
            f"{source}: {what} is not in front of camera {listed}{more}; is T stored untransposed, or "
            "camera -> world instead of world -> camera? The release stores the transpose of [[R, t], [0, 0, 0, 1]]"
        )


def parse_calibration(text: str, source: str = "camera_calibration.json",
                      in_front_of=WORLD_ORIGIN) -> list[Camera]:
    """Parses the text of a `camera_calibration.json`, keeping the JSON camera order.

    Every camera must be stored as the release stores it (K and T transposed: their last rows must
    read [0,0,1] and [0,0,0,1] after the transpose) and must see the point `in_front_of` (world mm;
    default the world origin, where the Ava-256 dome's head sits) at a positive depth. Pass
    `in_front_of=None` to check that later with the head pose (`check_in_front`). Errors are
    UserErrors naming `source` and the camera.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{source} is not valid JSON ({error}); re-download it") from None
    except RecursionError:  # a hostile file nests arrays deeper than the parser goes
        raise UserError(f"{source} is nested too deeply to be a calibration; re-download it") from None
    if not isinstance(document, dict) or not isinstance(document.get("KRT"), list):
        raise UserError(f"{source} has no 'KRT' list of cameras")
    cameras = [_parse_camera(entry, source, i) for i, entry in enumerate(document["KRT"])]
    if not cameras:
        raise UserError(f"{source} lists no cameras")
    ids = [camera.camera_id for camera in cameras]
    if len(set(ids)) != len(ids):
        raise UserError(f"{source} lists a camera id twice")
    if in_front_of is not None:
        check_in_front(cameras, in_front_of, source)
    return cameras


def read_calibration(path: str | Path, in_front_of=WORLD_ORIGIN) -> list[Camera]:
    """Reads a `camera_calibration.json` file; see `parse_calibration`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"camera calibration {path} does not exist; download the camera_calibration asset")
    return parse_calibration(read_text(path), source=str(path), in_front_of=in_front_of)


def calibration_document(cameras: list[Camera]) -> dict:
    """The JSON document for `cameras` in the real schema (K and T transposed)."""
    entries = []
    for camera in cameras:
        world_to_camera = np.eye(4)
        world_to_camera[:3, :3] = camera.rotation
        world_to_camera[:3, 3] = camera.translation
        entries.append(
            {
                "cameraId": camera.camera_id,
                "K": camera.intrinsics.T.tolist(),
                "T": world_to_camera.T.tolist(),
                "distortion": [float(x) for x in camera.distortion[:4]],
                "distortionModel": "RadialAndTangential",
                "projectionModel": "Pinhole",
                "width": camera.width,
                "height": camera.height,
            }
        )
    return {"KRT": entries}


def camera_in_head_frame(camera: Camera, headpose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The camera seen from the head frame (docs/data-layout.md).

    `headpose` [3,4] maps head -> world, `x_w = Hr x_h + Ht`. Returns `camrot = R Hr` [3,3] and
    `campos = Hr^T (campos_world - Ht)` [3] (mm), both float64.
    """
    head_rotation = headpose[:3, :3]
    head_translation = headpose[:3, 3]
    camrot = camera.rotation @ head_rotation
    campos = head_rotation.T @ (camera.position - head_translation)
    return camrot, campos


def output_size(cameras: list[Camera], downsample: int, source: str) -> tuple[int, int]:
    """(height, width) of images loaded at `downsample`; every camera must share one sensor size."""
    if downsample < 1:
        raise UserError(f"downsample must be a positive integer, got {downsample}")
    sizes = {(camera.height, camera.width) for camera in cameras}
    if len(sizes) != 1:
        raise UserError(f"{source}: cameras have different sensor sizes {sorted(sizes)}; select cameras of one size")
    height, width = sizes.pop()
    if height // downsample < 1 or width // downsample < 1:
        raise UserError(f"downsample {downsample} leaves no pixels of a {width}x{height} sensor")
    return height // downsample, width // downsample


def look_at_rotation(position: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """World->camera rotation of a camera at `position` looking at `target` (x right, y down, z forward)."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("camera looks along its up vector")
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


def rotation_about_axis(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix for `angle` radians about `axis` (Rodrigues, exact)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
