"""Cameras: projecting points as the model sees them, and choosing cameras to show a model from."""

from __future__ import annotations

import numpy as np
import torch

# The original's frontal cameras of the Ava-256 dome, used for cross-identity strips when present.
FRONTAL_CAMERAS = ("401168", "401875", "402040", "401031")


def frontal_cameras(parts, exclude=()) -> list[str]:
    """Cameras for cross-identity strips: the original's frontal cameras when present, else per
    capture the camera closest to the mean viewing direction of its dome (domes face the face).
    Cameras in `exclude` (e.g. held out from training), and cameras without a usable sample (their
    archive missing or unreadable), are not chosen."""
    exclude = set(exclude)
    available = {camera for part in parts for camera in part.reader.usable_camera_ids} - exclude
    known = [camera for camera in FRONTAL_CAMERAS if camera in available]
    if known:
        return known
    chosen = []
    for part in parts:
        reader = part.reader
        centre = reader.load_head_pose(reader.neutral_frame)[:, 3].astype(np.float64)
        usable = set(reader.usable_camera_ids)
        cameras = ([camera for camera in reader.cameras if camera.camera_id in usable - exclude]
                   or [camera for camera in reader.cameras if camera.camera_id in usable] or reader.cameras)
        directions = np.stack([camera.position - centre for camera in cameras])
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        mean = directions.mean(axis=0)
        chosen.append(cameras[int(np.argmax(directions @ mean))].camera_id)
    return sorted(set(chosen))


def project_points(points: torch.Tensor, camrot: torch.Tensor, campos: torch.Tensor, focal: torch.Tensor,
                   princpt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole projection of head-frame points with a sample's camera (docs/data-layout.md).

    points [P,3] (mm, head frame), camrot [3,3] (head -> camera), campos [3] (mm), focal [2],
    princpt [2] (pixels at the sample's size) -> (pixels [P,2] as (x, y): column and row, with
    pixel centres at integers as in `pixelcoords`; in_camera [P,3], the points in the camera frame
    in mm, whose z is the depth along the optical axis, <= 0 behind the camera). The inverse of
    the rays `ava.kernels.compute_raydirs` casts.
    """
    in_camera = (points - campos) @ camrot.T
    pixels = focal * in_camera[:, :2] / in_camera[:, 2].clamp_min(1e-6)[:, None] + princpt
    return pixels, in_camera
