"""`ava view`: an interactive web viewer of a checkpoint's avatars."""

from __future__ import annotations

from typing import Annotated

import tyro

from ava.view.config import ViewConfig


def main(config: Annotated[ViewConfig, tyro.conf.arg(name="")]) -> int:
    """Open a trained avatar in an interactive web viewer (orbit camera, identity, expression playback, cross-identity driving)."""
    from ava.console import make_console

    from ava.view.server import serve

    return serve(config, make_console())
