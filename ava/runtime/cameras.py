"""Choosing cameras to show a model from."""

from __future__ import annotations

import numpy as np

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
