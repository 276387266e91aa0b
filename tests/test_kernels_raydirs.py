"""compute_raydirs (SPEC.md section 4) against hand-computed rays."""

from __future__ import annotations

import math

import pytest
import torch

from ava.kernels import compute_raydirs


def _camera(position_mm, rotation, focal=100.0, size=(3, 5)):
    height, width = size
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    return dict(
        campos=torch.tensor([position_mm], dtype=torch.float32),
        camrot=rotation[None].float(),
        focal=torch.tensor([[focal, focal]]),
        princpt=torch.tensor([[(width - 1) / 2, (height - 1) / 2]]),
        pixelcoords=torch.stack([xs, ys], dim=-1)[None],
        volradius=256.0,
    )


def test_central_ray_through_the_cube():
    # Camera 768 mm in front (-z), looking along +z: the central ray enters at t = 2, leaves at 4.
    raypos, raydir, tminmax = compute_raydirs(**_camera([0.0, 0.0, -768.0], torch.eye(3)))
    assert torch.allclose(raypos[0, 1, 2], torch.tensor([0.0, 0.0, -3.0]))
    assert torch.allclose(raydir[0, 1, 2], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(tminmax[0, 1, 2], torch.tensor([2.0, 4.0]))
    assert torch.allclose(raydir.norm(dim=-1), torch.ones(1, 3, 5))


def test_off_axis_pixel_direction_and_segment():
    # Pixel one column right of the principal point, focal 100: direction (0.01, 0, 1) normalised.
    _, raydir, tminmax = compute_raydirs(**_camera([0.0, 0.0, -768.0], torch.eye(3)))
    expected = torch.tensor([0.01, 0.0, 1.0]) / math.sqrt(1.0001)
    assert torch.allclose(raydir[0, 1, 3], expected, atol=1e-7)
    # It enters the z = -1 face at t = 2 / cos and leaves through z = +1 at t = 4 / cos.
    cosine = expected[2].item()
    assert torch.allclose(tminmax[0, 1, 3], torch.tensor([2.0 / cosine, 4.0 / cosine]), rtol=1e-6)


def test_camera_rotation_is_world_to_camera():
    # A camera on +x looking towards -x: world->camera maps -x (world) to +z (camera).
    rotation = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    raypos, raydir, tminmax = compute_raydirs(**_camera([768.0, 0.0, 0.0], rotation))
    assert torch.allclose(raydir[0, 1, 2], torch.tensor([-1.0, 0.0, 0.0]))
    assert torch.allclose(tminmax[0, 1, 2], torch.tensor([2.0, 4.0]))


def test_missed_rays_and_rays_starting_inside():
    # Looking away from the cube: every ray misses (tmin > tmax, so no samples).
    _, _, away = compute_raydirs(**_camera([0.0, 0.0, -768.0], torch.diag(torch.tensor([1.0, -1.0, -1.0]))))
    assert (away[..., 0] > away[..., 1]).all()
    # A camera inside the cube starts its rays at t = 0.
    _, _, inside = compute_raydirs(**_camera([0.0, 0.0, 0.0], torch.eye(3)))
    assert (inside[..., 0] == 0).all() and torch.allclose(inside[0, 1, 2, 1], torch.tensor(1.0))


def test_bad_shapes_raise():
    arguments = _camera([0.0, 0.0, -768.0], torch.eye(3))
    arguments["focal"] = arguments["focal"][:, :1]
    with pytest.raises(ValueError, match="focal"):
        compute_raydirs(**arguments)
