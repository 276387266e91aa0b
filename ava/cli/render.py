"""`ava render`: cross-identity video and strips (and an orbit) from a checkpoint."""

from __future__ import annotations

from typing import Annotated

import tyro

from ava.render.config import RenderConfig


def main(config: Annotated[RenderConfig, tyro.conf.arg(name="")]) -> int:
    """Render a cross-identity video (one identity's expressions on another) and PNG strips from a checkpoint."""
    from ava.console import make_console

    from ava.errors import UserError
    from ava.files import output_folder
    from ava.render.cross_id import render
    from ava.runtime.device import use_threads

    problems = [f"{flag} must be at least {least}, got {value}" for flag, value, least in (
        ("--max-frames", config.max_frames, 0), ("--fps", config.fps, 1), ("--orbit-frames", config.orbit_frames, 1),
        ("--downsample", config.downsample if config.downsample is not None else 1, 1)) if value < least]
    if problems:
        raise UserError("; ".join(problems))
    use_threads(config.threads)
    output_folder(config.output, "-o/--output", create=False)  # created when the first frame is written
    console = make_console()
    if config.driver_checkpoint is not None or config.headset is not None:
        from ava.render.driven import render_headset

        written = render_headset(config, console)
        console.print(f"wrote {written['video']} ({len(written['frames'])} headset frames of {written['headset']} "
                      f"driving {written['driven']}, camera {written['camera']})", highlight=False)
        return 0
    written = render(config, console)
    console.print(f"wrote {written['video']} ({len(written['frames'])} frames, camera {written['camera']}, "
                  f"{written['driver']} driving {written['driven']})", highlight=False, soft_wrap=True)
    if "orbit_video" in written:
        console.print(f"wrote {written['orbit_video']} ({len(written['orbit_frames'])} views)", highlight=False, soft_wrap=True)
    return 0
