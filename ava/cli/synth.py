"""`ava synth`: generate synthetic captures in the Ava-256 layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from ava.synth.config import SynthConfig


@dataclass
class SynthCommand:
    """Generate synthetic Ava-256 captures into OUT: one folder per subject in the real layout
    (calibration, frame list, head poses, meshes, textures, camera images, means, variances),
    plus OUT/ids.csv, OUT/face_topology.obj and OUT/synth_config.json. Images are raymarched
    with ava's own MVP raymarcher. Rerunning with the same settings does nothing."""

    output_dir: Annotated[Path, tyro.conf.arg(aliases=("-o",))]
    """Folder to write the dataset into (created if missing)."""
    settings: Annotated[SynthConfig, tyro.conf.arg(name="")] = field(default_factory=SynthConfig)
    """What to generate."""


def main(config: Annotated[SynthCommand, tyro.conf.arg(name="")]) -> int:
    from rich.console import Console

    from ava.synth.pipeline import generate, is_generated

    console = Console(stderr=True)
    if is_generated(config.output_dir, config.settings) and not config.settings.overwrite:
        console.print(f"{config.output_dir} already holds this synthetic dataset; nothing to do", highlight=False)
        return 0
    captures = generate(config.output_dir, config.settings)
    console.print(f"wrote {len(captures)} captures to {config.output_dir} (ids in {config.output_dir / 'ids.csv'})",
                  highlight=False)
    return 0
