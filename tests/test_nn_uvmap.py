"""UV index/barycentric maps, OBJ parsing, geometry images and primitive placement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ava.errors import UserError
from ava.nn.placement import place_primitives, primitive_spacing
from ava.nn.uvmap import build_uv_maps, format_obj, geometry_image, load_obj, parse_obj
from test_nn_helpers import grid_topology

# A unit UV square split along its diagonal; the geometry vertex ids are deliberately not the UV
# ids (geometry vertex 3-i carries uv i), so that the maps must translate between them.
SQUARE_OBJ = """
v 0 0 0
v 1 0 0
v 2 0 0
v 3 0 0
vt 0 0
vt 1 0
vt 1 1
vt 0 1
f 4/1 3/2 2/3
f 4/1 2/3 1/4
"""


def texel_uv(row: int, column: int, size: int) -> tuple[float, float]:
    return (column + 0.5) / size, 1.0 - (row + 0.5) / size


def test_square_maps_match_hand_computed_barycentrics(tmp_path, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path))
    topology = parse_obj(SQUARE_OBJ)
    size = 4
    maps = build_uv_maps(topology, size)
    assert maps.vertex_index.dtype == torch.int64 and maps.vertex_index.shape == (3, size, size)
    assert maps.bary.dtype == torch.float32 and maps.bary.shape == (3, size, size)
    for row in range(size):
        for column in range(size):
            u, v = texel_uv(row, column, size)
            if v <= u:  # first triangle (uv corners (0,0), (1,0), (1,1)); the diagonal ties to face 0
                expected_ids, expected_bary = [3, 2, 1], [1 - u, u - v, v]
            else:  # second triangle (uv corners (0,0), (1,1), (0,1))
                expected_ids, expected_bary = [3, 1, 0], [1 - v, u, v - u]
            assert maps.vertex_index[:, row, column].tolist() == expected_ids, (row, column)
            np.testing.assert_allclose(maps.bary[:, row, column].numpy(), expected_bary, atol=1e-6)
    # Row 0 is the top of the UV square (v close to 1): the vertical flip of the original.
    assert maps.vertex_index[:, 0, 0].tolist() == [3, 1, 0]


def test_texels_outside_every_triangle_take_the_nearest_edge_point():
    topology = parse_obj("vt 0 0\nvt 0.5 0\nvt 0 0.5\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1/1 2/2 3/3\n")
    maps = build_uv_maps(topology, 4, use_cache=False)
    # (u, v) = (0.375, 0.375) is in row 2, column 1: nearest point is the hypotenuse midpoint.
    np.testing.assert_allclose(maps.bary[:, 2, 1].numpy(), [0.0, 0.5, 0.5], atol=1e-6)
    # (0.875, 0.125) in row 3, column 3: nearest point is the corner (0.5, 0).
    np.testing.assert_allclose(maps.bary[:, 3, 3].numpy(), [0.0, 1.0, 0.0], atol=1e-6)
    # (0.125, 0.125) in row 3, column 0 lies inside.
    np.testing.assert_allclose(maps.bary[:, 3, 0].numpy(), [0.5, 0.25, 0.25], atol=1e-6)
    np.testing.assert_allclose(maps.bary.sum(0).numpy(), 1.0, atol=1e-6)
    assert (maps.bary >= 0).all()


def test_geometry_image_reproduces_linear_functions_inside_the_mesh():
    topology = grid_topology(12)
    size = 64
    maps = build_uv_maps(topology, size, use_cache=False)
    image = geometry_image(topology.verts[None], maps)  # vertex position = its own uv
    assert image.shape == (1, 3, size, size)
    rows, columns = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    u, v = (columns + 0.5) / size, 1 - (rows + 0.5) / size
    inside = (u > 0.12) & (u < 0.88) & (v > 0.07) & (v < 0.68)
    np.testing.assert_allclose(image[0, 0][inside].numpy(), u[inside].numpy(), atol=1e-5)
    np.testing.assert_allclose(image[0, 1][inside].numpy(), v[inside].numpy(), atol=1e-5)
    # Outside, the value is the nearest surface point: clamped into the UV layout.
    assert float(image[0, 0].min()) >= 0.1 - 0.01 and float(image[0, 1].max()) <= 0.7 + 0.01
    # The tensor form and the dataclass form agree, and gradients flow to the vertices.
    verts = topology.verts[None].clone().requires_grad_(True)
    geometry_image(verts, maps.vertex_index, maps.bary).sum().backward()
    assert verts.grad.abs().sum() > 0


def test_maps_are_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("AVA_CACHE_DIR", str(tmp_path))
    topology = grid_topology(6)
    first = build_uv_maps(topology, 32)
    files = list((tmp_path / "uvmaps").iterdir())
    assert len(files) == 1 and files[0].name.endswith("-32.npz")
    second = build_uv_maps(topology, 32)
    assert torch.equal(first.vertex_index, second.vertex_index) and torch.equal(first.bary, second.bary)
    moved = grid_topology(6, seed=1)
    build_uv_maps(moved, 32)
    assert len(list((tmp_path / "uvmaps").iterdir())) == 2
    with pytest.raises(UserError):
        build_uv_maps(topology, 48)


def test_obj_parsing_round_trip_and_errors(tmp_path):
    quad = parse_obj("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nf -4/-4 -3/-3 -2/-2 -1/-1\n")
    assert quad.faces.tolist() == [[0, 1, 2], [0, 2, 3]]
    assert quad.face_uvs.tolist() == [[0, 1, 2], [0, 2, 3]]
    path = tmp_path / "mesh.obj"
    path.write_text(format_obj(quad))
    again = load_obj(path)
    for name in ("verts", "uvs", "faces", "face_uvs"):
        assert torch.equal(getattr(again, name), getattr(quad, name))
    assert again.content_hash() == quad.content_hash()
    with pytest.raises(UserError, match="texture coordinate"):
        parse_obj("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(UserError, match="vertex index 4 is out of range"):
        parse_obj("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1/1 2/1 4/1\n")
    with pytest.raises(UserError):
        load_obj(tmp_path / "missing.obj")


TRIANGLE = "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"


@pytest.mark.parametrize("text, line, message", [
    ("v 0 0\n", 1, "a vertex needs 3 coordinates"),
    ("v 0 0 0 0 0\n", 1, "a vertex needs 3 coordinates"),
    ("v 0 zero 0\n", 1, "'zero' is not a number"),
    ("v 0 nan 0\n", 1, "'nan' is not a finite number"),
    ("vt\n", 1, "a texture coordinate needs 1 to 3 numbers, got 0"),
    ("vt 0 0 0 0\n", 1, "a texture coordinate needs 1 to 3 numbers, got 4"),
    ("vt 0.5 x\n", 1, "'x' is not a number"),
    ("vn 0 1\n", 1, "a normal needs 3 numbers"),
    (TRIANGLE + "f 1/1 2/2\n", 7, "a face needs at least 3 corners"),
    (TRIANGLE + "f 1/1 2/2 3.5/3\n", 7, "vertex index '3.5' is not an integer"),
    (TRIANGLE + "f 1/1 2/2 0/3\n", 7, "vertex index 0 is not valid"),
    (TRIANGLE + "f 1/1 2/2 3/3/1/1\n", 7, "is not v, v/vt, v/vt/vn or v//vn"),
    (TRIANGLE + "f /1 2/2 3/3\n", 7, "is not v, v/vt, v/vt/vn or v//vn"),
    (TRIANGLE + "\nf 1/1 2/2 7/3\n", 8, "vertex index 7 is out of range \\(the file has 3\\)"),
    (TRIANGLE + "f 1/1 2/2 -4/3\n", 7, "vertex index -4 points before the first vertex \\(only 3 defined"),
    (TRIANGLE + "f 1/1 2/2 3/-9\n", 7, "texture coordinate index -9 points before the first"),
    (TRIANGLE + "f 1/1 2/2 3/4\n", 7, "texture coordinate index 4 is out of range"),
    (TRIANGLE + "f 1/1/1 2/2/1 3/3/1\n", 7, "normal index 1 is out of range \\(the file has 0\\)"),
    (TRIANGLE + "vn 0 0 1\nf 1/1/1 2/2/1 3/3/-2\n", 8, "normal index -2 points before the first normal"),
    (TRIANGLE + "vn 0 0 1\nf 1//1 2//1 3//1\n", 8, "face corner '1//1' has no texture coordinate"),
    ("f 1/1 2/2 3/3\n" + TRIANGLE.replace("v 0 1 0\n", ""), 1, "vertex index 3 is out of range"),
])
def test_malformed_obj_lines_are_one_error_with_their_line(text, line, message, tmp_path):
    with pytest.raises(UserError, match=f"^<obj>:{line}: (face corner .* )?{message}"):
        parse_obj(text)
    path = tmp_path / "bad.obj"
    path.write_text(text)
    with pytest.raises(UserError, match=f"^{path}:{line}: (face corner .* )?{message}"):
        load_obj(path)


def test_legal_obj_variants_load(tmp_path):
    text = ("# a quad and a triangle, every face form the model can use\n"
            "mtllib mesh.mtl\no quad\nv 0 0 0\nv 1 0 0 1.0\nv 1 1 0 0.5 0.5 0.5\nv 0 1 0\n"
            "vt 0\nvt 1 0 0\nvt 1 1\nvt 0 1  # inline comment\nvn 0 0 1\ns off\ng face\nusemtl skin\n"
            "f 1/1/1 2/2/1 3/3/1 4/4/1\n"
            "v 2 0 0\nvt 1 0.5\nf -4/-4 -1/-1 -3/-3\n"
            "f 3/3//1 4/4 1/1\n".replace("3/3//1", "3/3/1"))
    topology = parse_obj(text)
    assert topology.verts.tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0]]
    assert topology.uvs.tolist() == [[0, 0], [1, 0], [1, 1], [0, 1], [1, 0.5]]  # `vt 0`: v defaults to 0
    assert topology.faces.tolist() == [[0, 1, 2], [0, 2, 3], [1, 4, 2], [2, 3, 0]]
    assert topology.face_uvs.tolist() == [[0, 1, 2], [0, 2, 3], [1, 4, 2], [2, 3, 0]]
    path = tmp_path / "latin1.obj"
    path.write_bytes(b"# \xe9\n" + text.encode())
    with pytest.raises(UserError, match="not a text OBJ file"):
        load_obj(path)


def plane_postex(size: int, step_u: float, step_v: float) -> torch.Tensor:
    rows, columns = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return torch.stack([columns * step_u, -rows * step_v, torch.zeros_like(rows)])[None]


def test_place_primitives_on_a_plane():
    size, per_side = 32, 4
    postex = plane_postex(size, 0.5, 0.25)
    primpos, primrot = place_primitives(postex, per_side)
    assert primpos.shape == (1, 16, 3) and primrot.shape == (1, 16, 3, 3)
    # Primitive k = r*P + c sits at texel (8r+4, 8c+4).
    k = 2 * per_side + 3
    np.testing.assert_allclose(primpos[0, k].numpy(), [(8 * 3 + 4) * 0.5, -(8 * 2 + 4) * 0.25, 0.0])
    # Columns T, B, N: T = +u direction = x, N = T x dv with dv = -y, so N = -z, B = N x T = -y.
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
    assert torch.allclose(primrot[0], expected.expand(16, 3, 3), atol=1e-6)
    spacing = primitive_spacing(postex, per_side)
    assert spacing.shape == (1, 16)
    np.testing.assert_allclose(spacing.numpy(), 8 * 0.5)


def test_place_primitives_on_a_curved_surface_gives_rotations():
    size, per_side = 16, 2
    rows, columns = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    angle = columns * 0.1
    postex = torch.stack([torch.sin(angle), -rows * 0.1, torch.cos(angle)])[None]
    primpos, primrot = place_primitives(postex, per_side)
    identity = torch.eye(3).expand(4, 3, 3)
    assert torch.allclose(primrot[0] @ primrot[0].transpose(-1, -2), identity, atol=1e-5)
    assert torch.allclose(torch.linalg.det(primrot[0]), torch.ones(4), atol=1e-5)
    # The tangent follows the one-texel difference towards +column.
    centre_column = 4
    du = postex[0, :, 4, centre_column + 1] - postex[0, :, 4, centre_column]
    assert torch.allclose(primrot[0, 0, :, 0], du / du.norm(), atol=1e-6)
    with pytest.raises(ValueError):
        place_primitives(postex, 16)
    with pytest.raises(ValueError, match="at least 4 texels"):  # 2 texels: the +u texel of the last column is outside
        place_primitives(postex, 8)
