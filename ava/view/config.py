"""`ava view` configuration (dataclasses only, so `ava --help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro


@dataclass
class ViewConfig:
    """Interactive web viewer of a trained avatar (viser): orbit the camera around the head, pick
    the identity, play the expressions of a capture's segment (or scrub its frames and scale the
    expression code), and drive one identity with another's expressions. Open the printed URL in
    a browser; Ctrl-C stops the viewer. Renders with ava.kernels (GPU; on a CPU at a small size)."""

    checkpoint: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """An ava checkpoint (e.g. run/checkpoints/step_00000400.safetensors)."""
    host: str = "127.0.0.1"
    """Address to listen on (127.0.0.1: this machine only; 0.0.0.0 to let others on the network in, who then need the random token in the printed URL)."""
    port: Annotated[int, tyro.conf.arg(aliases=("-p",))] = 8080
    """Port to listen on (the next free one if taken; 0 picks any)."""
    dataset_dir: Path | None = None
    """Dataset with the checkpoint's captures, for the identities' neutral conditioning and the
    expressions (default: the one it was trained on, if it still exists, else the demo set)."""
    height: int | None = None
    """Rendered image height in pixels, 16 to 2048 (default 512 on a GPU, 96 on a CPU); the width
    follows the browser window's shape. Adjustable in the viewer. On a CPU the size is capped by
    the model's primitive count (in a 2:1 window 242 rows for the demo model, 30 for ava256)."""
    fps: float = 15.0
    """Playback rate of the expression frames."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render."""
