"""`ava show`: pictures of one capture's data (image, mesh, keypoints, segmentation, rig, headset)."""

from __future__ import annotations

from typing import Annotated

import tyro

from ava.show.config import ShowConfig


def main(config: Annotated[ShowConfig, tyro.conf.arg(name="")]) -> int:
    """Draw one capture's data as PNGs: the image, the tracked mesh and keypoints projected onto it, the part segmentation, the camera rig from above and the headset's IR views."""
    from ava.console import make_console

    from ava.files import output_folder
    from ava.show.run import show

    output_folder(config.output, "-o/--output", create=False)
    console = make_console()
    shown = show(config)
    for part, path in shown.written.items():
        console.print(f"wrote {path} ({part})", highlight=False)
    for part, reason in shown.absent.items():
        console.print(f"[yellow]skipped {part}:[/] {reason}", highlight=False)
    for part, reason in shown.failed.items():
        console.print(f"[bold red]error ({part}):[/] {reason}", highlight=False, soft_wrap=True)
    return 1 if shown.failed else 0
