"""Shared builders for the model, checkpoint and convert tests: a small head-like mesh, a camera
that sees it, and a batch in the dataset's sample layout."""

from __future__ import annotations

import numpy as np
import torch

from ava.nn.autoencoder import build_autoencoder
from ava.nn.config import ModelConfig
from ava.nn.uvmap import Topology, build_uv_maps

# The smallest valid model: 64x64 UV, 8x8 primitives of 8^3 voxels; fast enough for many
# forward/backward passes on a CPU.
SMALL = ModelConfig(uv_size=64, prims_per_side=8, voxels_per_prim=8, warp_size=8)


def grid_topology(points_per_side: int, low=(0.1, 0.05), extent=(0.8, 0.65), seed=0) -> Topology:
    """A jittered planar grid whose UV layout covers [low, low + extent] of the UV square."""
    rng = np.random.default_rng(seed)
    axis = np.linspace(0.0, 1.0, points_per_side)
    grid = np.stack(np.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    uvs = grid * np.array(extent) + np.array(low) + rng.normal(0, 0.1 / points_per_side / 4, grid.shape)
    uvs = np.clip(uvs, 0.0, 1.0)
    faces = []
    for i in range(points_per_side - 1):
        for j in range(points_per_side - 1):
            a = i * points_per_side + j
            faces += [[a, a + 1, a + points_per_side + 1], [a, a + points_per_side + 1, a + points_per_side]]
    faces = torch.tensor(faces)
    verts = torch.tensor(np.concatenate([uvs, np.zeros((len(uvs), 1))], 1), dtype=torch.float32)
    return Topology(verts=verts, uvs=torch.tensor(uvs, dtype=torch.float32), faces=faces, face_uvs=faces.clone())


def head_topology() -> tuple[Topology, torch.Tensor]:
    """A 12x12 grid covering the whole UV square, bent into a half cylinder of about 200 mm
    facing +z; returns the topology and its vertices in mm (used as the vertex mean)."""
    topology = grid_topology(12, low=(0.0, 0.0), extent=(1.0, 1.0))
    u, v = topology.uvs[:, 0], topology.uvs[:, 1]
    angle = (u - 0.5) * 2.5
    verts = torch.stack([100 * torch.sin(angle), (v - 0.5) * 200, 100 * torch.cos(angle)], dim=1)
    return topology, verts


def small_model(num_cameras=3, num_identities=2, config: ModelConfig = SMALL, seed=0):
    torch.manual_seed(seed)
    topology, vertmean = head_topology()
    model = build_autoencoder(
        config,
        topology,
        vertmean=vertmean,
        vertstd=2.0,
        num_cameras=num_cameras,
        num_identities=num_identities,
        uvmaps=build_uv_maps(topology, config.uv_size, use_cache=False),  # keep tests out of ~/.cache
        raymarch_backend="torch",
    )
    return model, topology, vertmean


def batch(topology: Topology, uv_size: int, size=(10, 12), count=1, seed=1, camindex=None) -> dict:
    """Model inputs for `count` samples seen by a camera 600 mm in front of the mesh."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    rows, columns = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    vertices = topology.num_verts
    return {
        "camrot": torch.tensor([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]]).expand(count, 3, 3).contiguous(),
        "campos": torch.tensor([0.0, 0.0, 600.0]).expand(count, 3).contiguous(),
        "focal": torch.full((count, 2), 30.0),
        "princpt": torch.tensor([width / 2, height / 2]).expand(count, 2).contiguous(),
        "modelmatrix": torch.eye(4).expand(count, 4, 4).contiguous(),
        "avgtex": torch.randn(count, 3, uv_size, uv_size, generator=generator),
        "verts": 0.1 * torch.randn(count, vertices, 3, generator=generator),
        "neut_avgtex": torch.randn(count, 3, uv_size, uv_size, generator=generator),
        "neut_verts": 0.1 * torch.randn(count, vertices, 3, generator=generator),
        "pixelcoords": torch.stack([columns, rows], -1).expand(count, height, width, 2).contiguous(),
        "idindex": torch.zeros(count, dtype=torch.int64),
        "camindex": torch.zeros(count, dtype=torch.int64) if camindex is None else camindex,
    }


def test_the_test_scene_is_visible():
    model, topology, _ = small_model()
    model.eval()
    with torch.no_grad():
        out = model(**batch(topology, SMALL.uv_size), output_set={"ialpha"})
    alpha = out["ialpha"]
    assert 0.05 < float(alpha.mean()) and float(alpha.max()) <= 1.0 + 1e-6
