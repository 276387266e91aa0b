"""The `ava` command line: one tyro subcommand per module in this package.

Each subcommand module defines `main(config)` whose only parameter is annotated with the
subcommand's config dataclass and `tyro.conf.arg(name="")`, so that flags read
`--train.dataset-dir` rather than `--config.train.dataset-dir`. Config modules import only
dataclasses at module level; the heavy work is imported inside `main`, which keeps `ava --help`
fast.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

# name shown on the command line -> module in ava.cli. Only subcommands that work are listed.
SUBCOMMANDS: dict[str, str] = {
    "download": "download",
    "convert": "convert",
    "synth": "synth",
    "train": "train",
    "render": "render",
    "show": "show",
    "view": "view",
    "eval": "eval",
}


def _load_subcommands() -> dict:
    entries = {}
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"ava.cli.{module_name}")
        entries[name] = module.main
    return entries


def main(argv: Sequence[str] | None = None) -> None:
    import tyro
    from rich.console import Console

    from ava.errors import UserError

    if not SUBCOMMANDS:
        print("ava: no subcommands are installed", file=sys.stderr)
        sys.exit(2)
    try:
        result = tyro.extras.subcommand_cli_from_dict(
            _load_subcommands(),
            args=argv,
            description="ava: Ava-256 face avatars with a Triton MVP raymarcher.",
        )
    except UserError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        sys.exit(130)
    sys.exit(int(result) if isinstance(result, int) else 0)
