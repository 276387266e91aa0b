"""A dome of calibrated cameras around the synthetic head, and the head's motion in it.

World frame: millimetres, z up, the dome centred near the origin. The head frame (head.py: y up,
z out of the face) is turned into the world by a base pose that maps the head's up to world z and
its face to world -y, yawed a little, so that head pose composition is exercised for real; each
frame adds a small smooth rotation and translation (SPEC §1.6: head -> world).
"""

from __future__ import annotations

import math

import numpy as np

from ava.data.calibration import DOME_SENSOR_HEIGHT, DOME_SENSOR_WIDTH, Camera, look_at_rotation, rotation_about_axis

# Columns: the world directions of the head's x, y and z axes.
_HEAD_AXES_IN_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]).T
WORLD_UP = np.array([0.0, 0.0, 1.0])


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


def camera_ids(count: int, rng: np.random.Generator) -> list[str]:
    """Distinct 6-digit ids in the style of the dome's (400xxx-401xxx), sorted."""
    return [str(400000 + int(number)) for number in sorted(rng.choice(2000, size=count, replace=False))]


def make_dome(count: int, head_pose: np.ndarray, rng: np.random.Generator, distance_mm: float = 1000.0,
              sensor: tuple[int, int] = (DOME_SENSOR_WIDTH, DOME_SENSOR_HEIGHT)) -> list[Camera]:
    """`count` cameras about `distance_mm` from the head, spread over the front of the head.

    Directions cover azimuth -100..100 degrees and elevation -25..40 degrees around the face on a
    Fibonacci-like lattice with jitter; every camera looks at the head's centre (with a little
    aim and roll jitter) through a full-resolution pinhole sensor of `sensor` = (W, H) pixels.
    """
    width, height = sensor
    head_rotation, head_centre = head_pose[:, :3], head_pose[:, 3]
    cameras = []
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    for index, camera_id in enumerate(camera_ids(count, rng)):
        fraction = (index + 0.5) / count
        azimuth = math.radians(-100 + 200 * ((index * golden + rng.uniform(-0.03, 0.03)) % 1.0))
        elevation = math.radians(-25 + 65 * fraction + rng.uniform(-3, 3))
        direction = np.array([math.sin(azimuth) * math.cos(elevation), math.sin(elevation),
                              math.cos(azimuth) * math.cos(elevation)])
        position = head_centre + head_rotation @ direction * (distance_mm * rng.uniform(0.96, 1.04))
        target = head_centre + rng.uniform(-15, 15, 3)
        rotation = look_at_rotation(position, target, WORLD_UP)
        roll = rotation_about_axis([0, 0, 1], math.radians(rng.uniform(-3, 3)))
        rotation = roll @ rotation
        focal = rng.uniform(9800, 10600)  # the dome lenses have fx about 10355 at full resolution
        intrinsics = np.array([
            [focal * rng.uniform(0.998, 1.002), 0.0, width / 2 + rng.uniform(-40, 40)],
            [0.0, focal, height / 2 + rng.uniform(-60, 60)],
            [0.0, 0.0, 1.0],
        ])
        cameras.append(Camera(camera_id, intrinsics, rotation, -rotation @ position, np.zeros(5), width, height))
    return cameras
