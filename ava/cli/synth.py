"""`ava synth`: generate synthetic captures in the Ava-256 layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from ava.runtime.device import ThreadsFlag
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
    threads: ThreadsFlag = 0


def main(config: Annotated[SynthCommand, tyro.conf.arg(name="")]) -> int:
    """Generate synthetic captures in the Ava-256 layout (for tests, demos and trying ava without the dataset)."""
    from ava.console import make_console

    from ava.files import output_folder
    from ava.runtime.device import use_threads
    from ava.synth.pipeline import generate, is_generated, worker_count

    console = make_console()
    # Frames are rendered by worker processes; the flag sets the threads of each.
    threads = use_threads(config.threads, processes=worker_count(config.settings))
    output_folder(config.output_dir, "-o/--output-dir", create=False)  # generate() creates it
    if is_generated(config.output_dir, config.settings) and not config.settings.overwrite:
        console.print(f"{config.output_dir} already holds this synthetic dataset; nothing to do", highlight=False, soft_wrap=True)
        return 0
    captures = generate(config.output_dir, config.settings, threads=threads)
    console.print(f"wrote {len(captures)} captures to {config.output_dir} (ids in {config.output_dir / 'ids.csv'})",
                  highlight=False, soft_wrap=True)
    return 0
