"""`ava eval`: image metrics of a checkpoint on held-out cameras (optionally beside a second one)."""

from __future__ import annotations

from typing import Annotated

import tyro

from ava.eval.config import EvalConfig


def main(config: Annotated[EvalConfig, tyro.conf.arg(name="")]) -> int:
    """Measure a checkpoint on held-out cameras: PSNR (whole image, head mask), SSIM and, where its weights are on disk, LPIPS, per identity; JSON, CSV and a table."""
    from ava.console import make_console
    from ava.eval.run import evaluate
    from ava.files import output_folder
    from ava.runtime.device import use_threads

    output_folder(config.output, "-o/--output", create=False)  # before the work, which would be lost
    use_threads(config.threads)
    console = make_console()
    evaluated = evaluate(config, console)
    # The results on stdout (notes and progress on stderr), never squeezed: a table wider than the
    # terminal (or than pytest-xdist's COLUMNS=80) would otherwise cut subject ids and numbers short.
    results, table = make_console(stderr=False), evaluated["table"]
    results.width = max(results.width, results.measure(table, options=results.options.update_width(1000)).maximum)
    results.print(table)
    console.print("wrote " + ", ".join(str(path) for path in evaluated["paths"].values()), highlight=False)
    return 0
