"""`ava eval`: image metrics of a checkpoint on held-out cameras (optionally beside a second one)."""

from __future__ import annotations

from typing import Annotated

import tyro

from ava.eval.config import EvalConfig


def main(config: Annotated[EvalConfig, tyro.conf.arg(name="")]) -> int:
    """Measure a checkpoint on held-out cameras: PSNR (whole image, head mask), SSIM and, where its weights are on disk, LPIPS, per identity; JSON, CSV and a table."""
    from rich.console import Console

    from ava.eval.run import evaluate
    from ava.runtime.device import use_threads

    use_threads(config.threads)
    console = Console(stderr=True)
    evaluated = evaluate(config, console)
    Console().print(evaluated["table"])  # the results on stdout, notes and progress on stderr
    console.print("wrote " + ", ".join(str(path) for path in evaluated["paths"].values()), highlight=False)
    return 0
