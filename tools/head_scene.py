"""The raymarcher's reference workload (batch 4, 512x334 rays, 16384 primitives of 8^3, dt 1/256),
on a synthetic head (`head_scene`) or on the original repository's registered mesh (`mesh_scene`).

A head-sized closed-ish surface (an ellipsoid of half-axes 75 x 100 x 95 mm with a nose, brows
and cheeks as smooth bumps) is parameterised over a 1024x1024 UV image whose longitude runs
along u (the front 85% of the way around) and latitude along v (rows 0..1023 = top..bottom, the
flipped-UV layout). Primitives are placed on that position image exactly as the decoder places
them (`ava.nn.placement`: a 128x128 grid of centres, TBN frames, scale 0.8 * 2 / spacing so that
neighbours overlap by about 25%). Four cameras 0.7 m away (yaw -30, -10, 10, 30 degrees) with the
original's ÷8 intrinsics (fx = fy ≈ 1294 px) look at it through 512x334 pixels. Templates are
8^3 RGBA with rgb around 100 and alpha around 70; at 0.7 m the head covers about half the pixels and
most covered rays saturate within a few samples, close to the original's measurement scene (51%
covered, 47% saturated); the benchmark prints both fractions.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

VOLRADIUS = 256.0


def head_position_image(size: int = 1024, device="cpu") -> torch.Tensor:
    """[1, 3, size, size] surface positions in volume units, flipped-UV layout."""
    texel = (torch.arange(size, device=device, dtype=torch.float64) + 0.5) / size
    v = 1.0 - texel[:, None]  # row r <-> v = 1 - (r + 0.5) / size
    u = texel[None, :]
    longitude = (u - 0.5) * 2.0 * math.pi * 0.85
    latitude = (v - 0.5) * math.pi * 0.85
    bumps = (
        0.10 * torch.exp(-((longitude / 0.18) ** 2 + ((latitude + 0.05) / 0.25) ** 2))  # nose
        + 0.03 * torch.exp(-((longitude.abs() - 0.35) / 0.2) ** 2 - ((latitude - 0.25) / 0.08) ** 2)  # brows
        + 0.025 * torch.exp(-((longitude.abs() - 0.55) / 0.25) ** 2 - ((latitude + 0.2) / 0.2) ** 2)  # cheeks
    )
    radius = 1.0 + bumps
    x = 75.0 * radius * torch.cos(latitude) * torch.sin(longitude)
    y = -100.0 * radius * torch.sin(latitude)  # image-style y: down is +y, so the top of the head is -y
    z = -95.0 * radius * torch.cos(latitude) * torch.cos(longitude)  # the face looks towards -z
    return (torch.stack([x, y, z], dim=0)[None] / VOLRADIUS).float()


def look_at_cameras(yaws_deg, distance_mm: float = 1000.0, device="cpu", facing: float = -1.0):
    """campos [N,3] (mm) and camrot [N,3,3] (world->camera rows) for cameras on a circle around
    the y axis, looking at the origin, image y pointing down (+y). `facing` is the sign of z on
    the side of the head the face looks to (-1 for the synthetic head, +1 for the original's
    registered mesh)."""
    import numpy as np

    from ava.data.calibration import look_at_rotation

    campos, camrot = [], []
    for yaw in yaws_deg:
        angle = math.radians(yaw)
        position = np.array([distance_mm * math.sin(angle), 0.0, facing * distance_mm * math.cos(angle)])
        campos.append(torch.from_numpy(position).float())
        camrot.append(torch.from_numpy(look_at_rotation(position, np.zeros(3), np.array([0.0, -1.0, 0.0]))).float())
    return torch.stack(campos).to(device), torch.stack(camrot).to(device)


YAWS = (-30.0, -10.0, 10.0, 30.0, -45.0, 45.0, 0.0, 20.0)


def primitive_scene(postex: torch.Tensor, campos: torch.Tensor, camrot: torch.Tensor, height: int = 512,
                    width: int = 334, prims_per_side: int = 128, voxels: int = 8, random_order: bool = False,
                    seed: int = 0, device="cuda") -> dict:
    """mvp_raymarch keyword arguments: primitives placed on the position image `postex`
    [1,3,S,S] (volume units) as the decoder places them, seen by cameras campos [N,3] (mm),
    camrot [N,3,3] through height x width pixels with the original's ÷8 intrinsics."""
    from ava.data.dataset import pixel_coordinates
    from ava.kernels import compute_raydirs
    from ava.nn.placement import place_primitives, primitive_spacing

    batch = campos.shape[0]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    postex = postex.to(device)
    primpos, primrot = place_primitives(postex, prims_per_side)
    spacing = primitive_spacing(postex, prims_per_side)
    primscale = (0.8 * 2.0 / spacing)[..., None].expand(-1, -1, 3)
    count = prims_per_side * prims_per_side
    primpos = primpos.expand(batch, count, 3).contiguous()
    primrot = primrot.expand(batch, count, 3, 3).contiguous()
    primscale = primscale.expand(batch, count, 3).contiguous()
    shape = (batch, count, voxels, voxels, voxels)
    rgb = torch.relu(25.0 * torch.randn(*shape, 3, generator=generator) + 100.0)
    alpha = 40.0 * torch.nn.functional.softplus(torch.randn(*shape, 1, generator=generator) + 1.5)
    template = torch.cat([rgb, alpha], dim=-1).to(device)
    if random_order:
        order = torch.randperm(count, generator=generator).to(device)
        primpos, primrot, primscale, template = (x[:, order].contiguous() for x in (primpos, primrot, primscale, template))

    campos, camrot = campos.to(device), camrot.to(device)
    focal = torch.full((batch, 2), 10355.0 / 8.0, device=device)
    princpt = torch.tensor([[width / 2.0, height / 2.0]], device=device).expand(batch, 2).contiguous()
    pixelcoords = pixel_coordinates(height, width).to(device).expand(batch, height, width, 2).contiguous()
    raypos, raydir, tminmax = compute_raydirs(campos, camrot, focal, princpt, pixelcoords, VOLRADIUS)
    return dict(
        raypos=raypos, raydir=raydir, stepsize=1.0 / VOLRADIUS, tminmax=tminmax, primpos=primpos,
        primrot=primrot, primscale=primscale, template=template, warp=None,
    )


def head_scene(batch: int = 4, height: int = 512, width: int = 334, prims_per_side: int = 128,
               voxels: int = 8, uv_size: int = 1024, random_order: bool = False, seed: int = 0,
               distance_mm: float = 700.0, device="cuda") -> dict:
    """mvp_raymarch keyword arguments for the reference workload on the synthetic head."""
    campos, camrot = look_at_cameras(YAWS[:batch], distance_mm=distance_mm)
    return primitive_scene(head_position_image(uv_size), campos, camrot, height, width, prims_per_side, voxels,
                           random_order, seed, device)


def mesh_position_image(original: str | Path, uv_size: int = 1024) -> torch.Tensor:
    """[1,3,S,S] position image (volume units) of the original repository's registered mesh
    (`assets/021924.bin`, 7306 vertices in mm, on `assets/face_topology.obj`), interpolated into
    the topology's UV layout with ava's UV maps, as the decoder's geometry image would be."""
    import numpy as np

    from ava.nn.uvmap import build_uv_maps, geometry_image, load_obj

    assets = Path(original).expanduser() / "assets"
    for name in ("021924.bin", "face_topology.obj"):
        if not (assets / name).is_file():
            raise SystemExit(f"{assets / name} not found: --original must be a checkout of facebookresearch/ava-256")
    topology = load_obj(assets / "face_topology.obj")
    mesh = torch.from_numpy(np.fromfile(assets / "021924.bin", dtype=np.float32).reshape(-1, 3).copy())
    if mesh.shape[0] != topology.num_verts:
        raise SystemExit(f"021924.bin has {mesh.shape[0]} vertices, face_topology.obj {topology.num_verts}")
    maps = build_uv_maps(topology, uv_size)
    return geometry_image(mesh[None] / VOLRADIUS, maps)


def mesh_scene(original: str | Path, batch: int = 4, height: int = 512, width: int = 334, random_order: bool = False,
               seed: int = 0, distance_mm: float = 1000.0, device="cuda") -> dict:
    """The reference workload on the original's registered mesh (its face looks along +z),
    cameras `distance_mm` away."""
    campos, camrot = look_at_cameras(YAWS[:batch], distance_mm=distance_mm, facing=1.0)
    return primitive_scene(mesh_position_image(original), campos, camrot, height, width,
                           random_order=random_order, seed=seed, device=device)
