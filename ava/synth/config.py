"""Configuration of `ava synth` (dataclasses only, so `ava --help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Files `ava synth` writes next to the capture folders.
IDS_FILENAME = "ids.csv"
TOPOLOGY_FILENAME = "face_topology.obj"
MANIFEST_FILENAME = "synth_config.json"
SYNTH_FORMAT_VERSION = 3  # 2: the richer world (19 controls, scripted segments, varied identities); 3: headset takes of their own
# Settings that decide how a set is made, not what it holds: left out of the manifest, the
# settings digest and the demo set's cache folder name.
RUN_ONLY_FIELDS = ("workers", "overwrite", "device")


@dataclass
class SynthConfig:
    """What to generate; the same config and seed always give the same files."""

    n_ids: int = 4
    """Number of synthetic subjects, one capture folder each."""
    n_frames: int = 8
    """Frames per capture, spread over the scripted expression segments (EXP_neutral_peak first; with fewer frames than segments, the jaw, smile, blink, free-face, brow, lip and tongue segments get one each in that order)."""
    n_cams: int = 6
    """Cameras per capture from the fixed dome of 96 camera ids (the original's four frontal ones first); each capture misses a few non-frontal ones."""
    seed: int = 0
    """Random seed; everything (shapes, colours, expressions, cameras, ids) follows from it."""
    identity_variation: float = 1.0
    """How much subjects differ: scales every identity parameter's deviation from the average subject (head shape and proportions, nose, lips, eyes, jaw, ears, cheekbones, skin, hair, brows); 0 makes every subject the average one."""
    expression_variation: float = 1.0
    """How much each take departs from its segment's script (amplitudes, timing, holds, hesitations, spontaneous blinks, gaze drift); 0 gives every take of a segment the script's nominal performance (EXP_free_face stays random)."""
    texture_size: int = 256
    """Side of the unwrapped textures and the mean texture (a power of two; the real data use 1024)."""
    topology: str = "procedural"
    """Head mesh: procedural (ava's small head, see --mesh-columns), original (Ava-256 face_topology.obj, 7306 vertices; $AVA_TOPOLOGY_URL may name a local copy) or an OBJ path with its UV layout."""
    downsample: int = 32
    """Stored images are the 2668x4096 sensor divided by this (8 gives 333x512, 32 gives 83x128)."""
    prims_per_side: int = 32
    """The ground-truth primitives form a grid of this many per side on the UV map (32 -> 1024); --texture-size divided by it must be even and at least 4."""
    voxels: int = 8
    """Voxels per side of each ground-truth primitive's template."""
    mesh_columns: int = 64
    """Vertices around each ring of the procedural head mesh (--topology procedural)."""
    mesh_rows: int = 48
    """Rings of the procedural head mesh, from the neck to the crown (--topology procedural)."""
    keypoints: bool = True
    """Also write keypoints_3d (mesh landmarks in the world frame)."""
    headset: bool = True
    """Also write each subject's headset session (encoder/: five IR views, its own timing) and its ground truth (encoder_truth.json); --no-headset skips it (at the demo size it adds about 60% to the synthesis time)."""
    headset_size: int = 64
    """Side of the square headset IR images, in pixels."""
    workers: int = 0
    """Processes that render frames; 0 uses every CPU core (at most 8, or at most 16 with --device cuda)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the images are raymarched. cuda: each worker process raymarches every frame's views on the GPU (all full rays against all primitives, one call for the dome cameras and one for the headset cameras) while it paints textures and encodes images on its CPU core; cpu: the vectorised PyTorch raymarcher with its work-saving restrictions; auto: cuda when torch sees a GPU. The two give the same images up to float rounding (docs/data-layout.md)."""
    overwrite: bool = False
    """Replace an existing dataset in the output folder that was generated with other settings."""

    def check(self) -> None:
        from ava.errors import UserError

        problems = []
        for name in ("n_ids", "n_frames", "n_cams", "downsample", "voxels"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("identity_variation", "expression_variation"):
            if not getattr(self, name) >= 0:
                problems.append(f"--{name.replace('_', '-')} must be at least 0")
        if self.voxels < 2:
            problems.append("--voxels must be at least 2")
        size = self.texture_size
        if size < 16 or size & (size - 1):
            problems.append("--texture-size must be a power of two of at least 16")
        if (self.prims_per_side < 2 or size % self.prims_per_side or (size // self.prims_per_side) % 2
                or size // self.prims_per_side < 4):
            problems.append("--prims-per-side must divide --texture-size into an even number of texels per primitive, "
                            "at least 4 (ava.nn.placement)")
        if self.mesh_columns < 8 or self.mesh_rows < 8:
            problems.append("--mesh-columns and --mesh-rows must be at least 8")
        if self.headset_size < 16:
            problems.append("--headset-size must be at least 16")
        if self.n_ids > 900:
            problems.append("--n-ids is at most 900")
        from ava.synth.dome import DOME_CAMERA_IDS

        if self.n_cams > len(DOME_CAMERA_IDS):
            problems.append(f"--n-cams is at most {len(DOME_CAMERA_IDS)} (the cameras of the synthetic dome)")
        if not self.topology:
            problems.append("--topology must be procedural, original or the path of an OBJ")
        if problems:
            raise UserError("; ".join(problems))
