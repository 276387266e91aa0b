"""`ava render`: cross-identity video and strips (and an orbit) from a checkpoint."""

from __future__ import annotations

from typing import Annotated

import tyro

from ava.render.config import RenderConfig


def main(config: Annotated[RenderConfig, tyro.conf.arg(name="")]) -> int:
    from rich.console import Console

    from ava.errors import UserError
    from ava.render.cross_id import render

    if config.max_frames < 0 or config.fps < 1 or config.orbit_frames < 1:
        raise UserError("--max-frames cannot be negative; --fps and --orbit-frames must be at least 1")
    if config.downsample is not None and config.downsample < 1:
        raise UserError("--downsample must be at least 1")
    console = Console(stderr=True)
    if config.driver_checkpoint is not None or config.headset is not None:
        from ava.render.headset import render_headset

        written = render_headset(config, console)
        console.print(f"wrote {written['video']} ({len(written['frames'])} headset frames of {written['headset']} "
                      f"driving {written['driven']}, camera {written['camera']})", highlight=False)
        return 0
    written = render(config, console)
    console.print(f"wrote {written['video']} ({len(written['frames'])} frames, camera {written['camera']}, "
                  f"{written['driver']} driving {written['driven']})", highlight=False)
    if "orbit_video" in written:
        console.print(f"wrote {written['orbit_video']} ({len(written['orbit_frames'])} views)", highlight=False)
    return 0
