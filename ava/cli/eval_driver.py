"""`ava eval-driver`: a headset driver against the ground truth of synthetic headset sessions."""

from __future__ import annotations

from typing import Annotated

import tyro

from ava.driver.config import EvalDriverConfig


def main(config: Annotated[EvalDriverConfig, tyro.conf.arg(name="")]) -> int:
    """Evaluate a headset driver against ground truth (synthetic headset sessions, or the release's encodings of real headset frames): expression-code error and PSNR per segment, beside the mean-code baseline."""
    from rich.console import Console

    from ava.console import make_console
    from ava.driver.evaluate import evaluate_driver, print_table
    from ava.files import output_folder
    from ava.runtime.device import use_threads

    use_threads(config.threads)
    output_folder(config.output, "-o/--output", create=False)  # created when the first file is written
    console = make_console()
    result = evaluate_driver(config, console)
    print_table(result["rows"], Console(width=max(Console().width, 160)))
    summary = result["summary"]
    console.print(f"held-out PSNR against the true-code render: driver {summary['psnr_driver']:.2f} dB, mean code "
                  f"{summary['psnr_mean']:.2f} dB ({summary['psnr_gain']:+.2f} dB); wrote "
                  + ", ".join(str(path) for path in result["files"].values()), highlight=False)
    return 0
