"""A fixed dome of calibrated cameras around the synthetic head, and the head's motion in it.

World frame: millimetres, z up, the dome centred at the origin. The head frame (head.py: y up,
z out of the face) is turned into the world by a base pose that maps the head's up to world z and
its face to world -y, yawed a little, so that head pose composition is exercised for real; each
frame adds a small smooth rotation and translation (docs/data-layout.md: head -> world).

Like the real capture dome, every synthetic capture draws its cameras from one fixed set of
camera ids, each at a fixed place: `DOME_CAMERA_IDS` holds 96 six-digit ids in the style of the
Ava-256 dome's. `FRONTAL_CAMERA_IDS` (the four the original training script uses for its
cross-identity pictures) sit straight in front of the face; `--n-cams N` takes the first N of
`camera_priority()` (the frontal four, then the rest in an order that spreads them over the dome),
and each capture then misses a few of those (never a frontal one), as real captures do, so that
the sorted union of camera ids differs from any one capture's list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ava.data.calibration import DOME_SENSOR_HEIGHT, DOME_SENSOR_WIDTH, Camera, look_at_rotation, rotation_about_axis

# Columns: the world directions of the head's x, y and z axes.
_HEAD_AXES_IN_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]).T
WORLD_UP = np.array([0.0, 0.0, 1.0])

# Ids of the dome. 401031, 401168, 401875 and 402040 are the original training script's frontal
# cameras, 401878 and 401880 more frontal ones named by its render script, 400940 the camera of
# its assets/camera_calibration.json and 400002-400070 the 38 ids of its assets/KRT; the other 51
# fill the same 400xxx-402xxx range (every 37th id from 400263).
DOME_CAMERA_IDS = (
    "400002", "400004", "400007", "400008", "400009", "400010", "400012", "400013", "400015", "400016", "400017", "400018",
    "400019", "400023", "400026", "400027", "400028", "400029", "400030", "400031", "400037", "400039", "400041", "400042",
    "400048", "400049", "400050", "400051", "400053", "400055", "400059", "400060", "400061", "400063", "400064", "400067",
    "400069", "400070", "400263", "400300", "400337", "400374", "400411", "400448", "400485", "400522", "400559", "400596",
    "400633", "400670", "400707", "400744", "400781", "400818", "400855", "400892", "400929", "400940", "400966", "401003",
    "401031", "401040", "401077", "401114", "401151", "401168", "401188", "401225", "401262", "401299", "401336", "401373",
    "401410", "401447", "401484", "401521", "401558", "401595", "401632", "401669", "401706", "401743", "401780", "401817",
    "401854", "401875", "401878", "401880", "401891", "401928", "401965", "402002", "402039", "402040", "402076", "402113",
)
FRONTAL_CAMERA_IDS = ("401168", "401875", "402040", "401031")
# Where the frontal cameras look from: (azimuth, elevation) in degrees around the face's
# direction (azimuth towards the subject's left ear, elevation up).
_FRONTAL_PLACES = {
    "401031": (0.0, 0.0),
    "401168": (-15.0, 10.0),
    "401875": (15.0, 10.0),
    "402040": (0.0, -14.0),
    "401878": (-22.0, -6.0),
    "401880": (22.0, -6.0),
}
# The other cameras stand on rings: (elevation in degrees, cameras spread over -95..95 degrees of
# azimuth); places within _FRONTAL_GAP_DEG of a frontal camera, or nearer the face's direction than
# _FRONT_CLEAR_DEG (so that the frontal four are the most frontal cameras), are left out.
_RINGS = ((-30.0, 16), (-15.0, 19), (0.0, 19), (15.0, 19), (30.0, 18), (45.0, 14))
_FRONTAL_GAP_DEG = 9.0
_FRONT_CLEAR_DEG = 20.0
DOME_DISTANCE_MM = 1000.0


@dataclass(frozen=True)
class DomeCamera:
    """One camera of the fixed dome: where it stands and its lens, before per-capture calibration."""

    camera_id: str
    position: np.ndarray  # [3] world, mm
    rotation: np.ndarray  # [3,3] world -> camera
    intrinsics: np.ndarray  # [3,3] at full sensor resolution


def _direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """World direction from the dome centre; azimuth 0 is where a neutral head faces (world -y)."""
    azimuth, elevation = math.radians(azimuth_deg), math.radians(elevation_deg)
    head = np.array([math.sin(azimuth) * math.cos(elevation), math.sin(elevation),
                     math.cos(azimuth) * math.cos(elevation)])
    return _HEAD_AXES_IN_WORLD @ head


def _ring_places() -> list[tuple[float, float]]:
    frontal = [_direction(*place) for place in _FRONTAL_PLACES.values()]
    places = []
    for ring, (elevation, count) in enumerate(_RINGS):
        step = 190.0 / count
        shift = step / 4 if ring % 2 else -step / 4  # alternate rings interleave
        for index in range(count):
            place = (-95.0 + step * (index + 0.5) + shift, elevation)
            gap = min(math.degrees(math.acos(np.clip(_direction(*place) @ other, -1.0, 1.0))) for other in frontal)
            if gap > _FRONTAL_GAP_DEG and math.degrees(math.acos(_direction(*place) @ frontal[0])) > _FRONT_CLEAR_DEG:
                places.append(place)
    return places


@lru_cache(maxsize=1)
def dome_cameras() -> tuple[DomeCamera, ...]:
    """Every camera of the dome, in id order. Fixed: a camera id always has the same place and lens."""
    others = [camera_id for camera_id in DOME_CAMERA_IDS if camera_id not in _FRONTAL_PLACES]
    rings = _ring_places()
    # Keep the ring places nearest the front when the rings hold more places than ids.
    rings = sorted(sorted(rings, key=lambda p: math.hypot(*p))[: len(others)], key=lambda p: (p[1], p[0]))
    assert len(rings) == len(others), "the dome's rings must hold a place for every camera id"
    places = dict(_FRONTAL_PLACES) | dict(zip(others, rings))
    width, height = DOME_SENSOR_WIDTH, DOME_SENSOR_HEIGHT
    cameras = []
    for camera_id in DOME_CAMERA_IDS:
        rng = np.random.default_rng([257, int(camera_id)])  # a camera's own build, the same in every capture
        position = _direction(*places[camera_id]) * DOME_DISTANCE_MM * rng.uniform(0.96, 1.04)
        rotation = look_at_rotation(position, rng.uniform(-15, 15, 3), WORLD_UP)
        rotation = rotation_about_axis([0, 0, 1], math.radians(rng.uniform(-3, 3))) @ rotation
        focal = rng.uniform(9800, 10600)  # the dome lenses have fx about 10355 at full resolution
        intrinsics = np.array([
            [focal * rng.uniform(0.998, 1.002), 0.0, width / 2 + rng.uniform(-40, 40)],
            [0.0, focal, height / 2 + rng.uniform(-60, 60)],
            [0.0, 0.0, 1.0],
        ])
        cameras.append(DomeCamera(camera_id, position, rotation, intrinsics))
    return tuple(cameras)


@lru_cache(maxsize=1)
def camera_priority() -> tuple[str, ...]:
    """Camera ids in the order `--n-cams` takes them: the four frontal cameras, then each time the
    camera farthest (in angle from the dome centre) from those already taken, so that any prefix
    spreads over the dome."""
    cameras = {camera.camera_id: camera for camera in dome_cameras()}
    unit = {key: camera.position / np.linalg.norm(camera.position) for key, camera in cameras.items()}
    chosen = list(FRONTAL_CAMERA_IDS)
    left = [key for key in DOME_CAMERA_IDS if key not in chosen]
    nearest = {key: max(float(unit[key] @ unit[other]) for other in chosen) for key in left}
    while left:
        pick = min(left, key=lambda key: (nearest[key], key))  # smallest cosine to the taken set
        chosen.append(pick)
        left.remove(pick)
        for key in left:
            nearest[key] = max(nearest[key], float(unit[key] @ unit[pick]))
    return tuple(chosen)


def select_cameras(count: int) -> list[DomeCamera]:
    """The first `count` cameras of `camera_priority()`."""
    by_id = {camera.camera_id: camera for camera in dome_cameras()}
    return [by_id[camera_id] for camera_id in camera_priority()[:count]]


def missing_count(droppable: int, rng: np.random.Generator) -> int:
    """How many of `droppable` cameras a capture misses: 0 up to about one in eight (at least one
    possible once there are two to drop)."""
    most = math.ceil(droppable / 8) if droppable >= 2 else 0
    return int(rng.integers(0, most + 1))


def capture_cameras(selected: list[DomeCamera], rng: np.random.Generator,
                    sensor: tuple[int, int] = (DOME_SENSOR_WIDTH, DOME_SENSOR_HEIGHT)) -> list[Camera]:
    """One capture's calibrated cameras, in id order: `selected` less a few non-frontal ones,
    each with the small changes of a fresh calibration (about 0.3 mm, 0.03 degrees, 0.05% focal)."""
    droppable = [camera.camera_id for camera in selected if camera.camera_id not in FRONTAL_CAMERA_IDS]
    missing = set(rng.choice(droppable, size=missing_count(len(droppable), rng), replace=False).tolist()) \
        if droppable else set()
    width, height = sensor
    cameras = []
    for camera in sorted(selected, key=lambda c: c.camera_id):
        if camera.camera_id in missing:
            continue
        position = camera.position + rng.normal(0.0, 0.3, 3)
        wobble = rotation_about_axis(rng.normal(size=3), math.radians(rng.normal(0.0, 0.03)))
        rotation = camera.rotation @ wobble
        intrinsics = camera.intrinsics.copy()
        intrinsics[:2, :2] *= 1.0 + rng.normal(0.0, 5e-4)
        cameras.append(Camera(camera.camera_id, intrinsics, rotation, -rotation @ position, np.zeros(5), width, height))
    return cameras


def base_head_pose(rng: np.random.Generator) -> np.ndarray:
    """[3,4] head -> world for a head sitting near the dome centre."""
    yaw = rotation_about_axis(WORLD_UP, math.radians(rng.uniform(-12, 12)))
    pose = np.zeros((3, 4))
    pose[:, :3] = yaw @ _HEAD_AXES_IN_WORLD
    pose[:, 3] = rng.uniform(-15, 15, 3)
    return pose


def head_motion(base: np.ndarray, count: int, rng: np.random.Generator, amplitude_deg: float = 4.0,
                amplitude_mm: float = 6.0) -> np.ndarray:
    """[count,3,4] poses: the base pose with small smooth per-frame rotations and translations."""
    time = np.arange(count) / max(count, 1)
    poses = np.zeros((count, 3, 4))
    frequencies = rng.uniform(0.7, 2.0, 6)
    phases = rng.uniform(0, 2 * math.pi, 6)
    wave = np.sin(2 * math.pi * frequencies[None] * time[:, None] + phases[None])  # [count,6]
    for index in range(count):
        yaw, pitch, roll = np.radians(amplitude_deg * wave[index, :3] * np.array([1.0, 0.7, 0.5]))
        local = (rotation_about_axis([0, 1, 0], yaw) @ rotation_about_axis([1, 0, 0], pitch)
                 @ rotation_about_axis([0, 0, 1], roll))
        poses[index, :, :3] = base[:, :3] @ local
        poses[index, :, 3] = base[:, 3] + amplitude_mm * wave[index, 3:]
    return poses
