"""Synthetic Ava-256 captures (`ava synth`): same layout as the real data, rendered with ava.kernels.

`generate(dir, SynthConfig(...))` writes the dataset; `ensure_generated(dir)` does so only when
`dir` does not already hold it. Next to the capture folders: `ids.csv` (the ids list),
`face_topology.obj` (the head topology the model layer should use) and `synth_config.json`.

The world itself: `ava.synth.expressions` (the expression controls, `Expression`, the scripted
segments and `perform_segment` for a take of one), `ava.synth.head.Identity` (a subject's shape and
look) and `ava.synth.truth` (`GroundTruth`: the true mesh and texture of any identity and
expression; `read_synth_truth`: a capture's identity and per-frame expressions).
"""

from __future__ import annotations

from ava.synth.config import IDS_FILENAME, MANIFEST_FILENAME, TOPOLOGY_FILENAME, SynthConfig


def generate(output_dir, config: SynthConfig, progress: bool = True):
    """See `ava.synth.pipeline.generate`."""
    from ava.synth.pipeline import generate as run

    return run(output_dir, config, progress=progress)


def ensure_generated(output_dir, config: SynthConfig | None = None, progress: bool = True):
    """See `ava.synth.pipeline.ensure_generated`."""
    from ava.synth.pipeline import ensure_generated as run

    return run(output_dir, config, progress=progress)


__all__ = ["IDS_FILENAME", "MANIFEST_FILENAME", "TOPOLOGY_FILENAME", "SynthConfig", "generate", "ensure_generated"]
