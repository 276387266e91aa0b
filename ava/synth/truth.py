"""Ground truth of the synthetic world: the geometry and texture of any (identity, expression) on a
head surface, and each capture's `synth_truth.json` (its identity and per-frame expressions).

`GroundTruth(topology, mesh_columns, mesh_rows, texture_size)` is what `ava synth` uses per frame:
`vertices(identity, expression)` gives the tracked mesh (f32 [V,3], mm, head frame) and
`texture(identity, expression)` the unwrapped texture (uint8 [S,S,3], the release's flipped-UV
layout), so evaluation can rebuild the truth of an arbitrary expression vector
(`Expression.from_vector`).

`synth_truth.json` sits in every synthetic capture folder beside the release layout (training
never reads it): the identity's parameters (`Identity.to_dict`), the surface settings, the
control names and every dome frame's expression vector. `read_synth_truth(capture)` reads it back
and `SynthTruth.ground_truth()` rebuilds the capture's head. Its `settings_sha256` (the dataset's
settings) also tells `ava synth` that the capture is complete and made with the same settings, so
an interrupted run skips it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ava.errors import UserError
from ava.synth.expressions import CONTROLS, Expression
from ava.synth.head import Identity

TRUTH_FILENAME = "synth_truth.json"
TRUTH_FORMAT = "ava-synth-truth"
TRUTH_FORMAT_VERSION = 1

_CACHE: dict = {}


def surface_and_maps(topology: str, mesh_columns: int, mesh_rows: int, texture_size: int):
    """(head surface, its UV maps at `texture_size`, every texel's angles), built once per process."""
    key = (topology, mesh_columns, mesh_rows, texture_size)
    if key not in _CACHE:
        from ava.nn.uvmap import build_uv_maps
        from ava.synth.surface import head_surface

        surface = head_surface(topology, mesh_columns, mesh_rows)
        uvmaps = build_uv_maps(surface.topology, texture_size, use_cache=False)
        _CACHE[key] = (surface, uvmaps, surface.texel_angles(uvmaps))
    return _CACHE[key]


class GroundTruth:
    """The true mesh and texture of any identity making any expression on one head surface.

    topology: `procedural`, `original` or an OBJ path (as `ava synth --topology`); mesh_columns and
    mesh_rows: the procedural grid; texture_size: the texture's side (a power of two).
    """

    def __init__(self, topology: str = "procedural", mesh_columns: int = 64, mesh_rows: int = 48,
                 texture_size: int = 256) -> None:
        self.surface, self.uvmaps, self.angles = surface_and_maps(topology, mesh_columns, mesh_rows, texture_size)

    def vertices(self, identity: Identity, expression: Expression) -> np.ndarray:
        """f32 [V,3] the tracked mesh (mm, head frame)."""
        return self.surface.vertices(identity, expression)

    def texture(self, identity: Identity, expression: Expression) -> np.ndarray:
        """uint8 [S,S,3] the unwrapped texture (row 0 at v ~ 1, as in the release)."""
        from ava.synth.appearance import paint_texture

        return paint_texture(identity, expression, *self.angles)


@dataclass
class SynthTruth:
    """One synthetic capture's truth (`synth_truth.json`)."""

    capture_root: Path
    identity: Identity
    frames: list[tuple[str, str]]  # (segment, frame id) in frame-list order
    expressions: np.ndarray  # f64 [F, len(CONTROLS)]: every frame's expression vector
    topology: str
    mesh_columns: int
    mesh_rows: int
    texture_size: int
    settings_sha256: str

    def expression(self, frame_id: str) -> Expression:
        """The expression of dome frame `frame_id` (KeyError if the capture has no such frame)."""
        for index, (_, frame) in enumerate(self.frames):
            if frame == str(frame_id):
                return Expression.from_vector(self.expressions[index])
        raise KeyError(f"{self.capture_root.name} has no frame {frame_id}")

    def ground_truth(self, texture_size: int | None = None) -> GroundTruth:
        """The capture's head surface; a face topology is read from the dataset's own
        face_topology.obj (a copy of it) when present, so nothing is downloaded."""
        topology = self.topology
        local = self.capture_root.parent / "face_topology.obj"
        if topology != "procedural" and local.is_file():
            topology = str(local)
        return GroundTruth(topology, self.mesh_columns, self.mesh_rows, texture_size or self.texture_size)


def truth_document(identity: Identity, frames: list[tuple[str, str]], expressions: list[Expression], *,
                   topology: str, mesh_columns: int, mesh_rows: int, texture_size: int, settings_sha256: str) -> str:
    """The JSON text of a capture's synth_truth.json."""
    document = {
        "format": TRUTH_FORMAT, "format_version": TRUTH_FORMAT_VERSION, "settings_sha256": settings_sha256,
        "surface": {"topology": topology, "mesh_columns": mesh_columns, "mesh_rows": mesh_rows,
                    "texture_size": texture_size},
        "controls": list(CONTROLS),
        "identity": identity.to_dict(),
        "frames": [{"segment": segment, "frame_id": frame, "expression": e.as_vector().tolist()}
                   for (segment, frame), e in zip(frames, expressions)],
    }
    return json.dumps(document, indent=1) + "\n"


def read_synth_truth(capture_root: str | Path) -> SynthTruth:
    """Reads `<capture>/synth_truth.json`; a UserError when it is absent (real captures have none)
    or not a truth file of this version."""
    root = Path(capture_root)
    path = root / TRUTH_FILENAME
    if not path.is_file():
        raise UserError(f"{path} does not exist: only synthetic captures (ava synth) carry their ground truth")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != TRUTH_FORMAT or document.get("format_version") != TRUTH_FORMAT_VERSION:
            raise ValueError(f"format {document.get('format')!r} version {document.get('format_version')!r}")
        if tuple(document["controls"]) != CONTROLS:
            raise ValueError("its expression controls differ from this version's")
        surface = document["surface"]
        frames = [(str(row["segment"]), str(row["frame_id"])) for row in document["frames"]]
        expressions = np.array([row["expression"] for row in document["frames"]], dtype=np.float64)
        return SynthTruth(root, Identity.from_dict(document["identity"]), frames,
                          expressions.reshape(len(frames), len(CONTROLS)), str(surface["topology"]),
                          int(surface["mesh_columns"]), int(surface["mesh_rows"]), int(surface["texture_size"]),
                          str(document["settings_sha256"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not a synthetic ground truth file ({error}); regenerate the synthetic set") from None


def completed_with(capture_root: str | Path, settings_sha256: str) -> bool:
    """True when `capture_root` is a finished capture made with these settings: its folder is in
    place (captures appear by rename once complete) and its truth file carries the digest."""
    path = Path(capture_root) / TRUTH_FILENAME
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("settings_sha256") == settings_sha256
    except (OSError, ValueError, AttributeError):
        return False
