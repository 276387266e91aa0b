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
    "train-driver": "train_driver",
    "eval-driver": "eval_driver",
}


def _load_subcommands() -> dict:
    entries = {}
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"ava.cli.{module_name}")
        entries[name] = module.main
    return entries


def _stdout_closed() -> None:
    """The reader of our output went away (`ava ... --help | head`): say nothing more, as `cat`
    does. Python would otherwise print a traceback, and another when it flushes stdout at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a command whose pipe closed


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_closed()


def main(argv: Sequence[str] | None = None) -> None:
    import tyro
    from ava.console import make_console

    from ava import __version__
    from ava.errors import UserError

    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] in (["--version"], ["-V"]):
        print(f"ava {__version__}")
        sys.exit(0)
    commands = _load_subcommands()
    if arguments[:1] and arguments[0] in commands:
        # Only the named command: tyro's "Perhaps you meant" for a mistyped flag searches every
        # command it was given, so `ava train --train.maxiters` would also offer train-driver's flags.
        commands = {arguments[0]: commands[arguments[0]]}
    try:
        result = tyro.extras.subcommand_cli_from_dict(
            commands,
            prog="ava",  # not sys.argv[0]: '/venv/bin/ava' or '.../ava/__main__.py' under python -m
            args=arguments,
            description=f"ava {__version__}: Ava-256 face avatars with a Triton MVP raymarcher (ava --version "
            "prints the version; ava COMMAND --help explains a command).",
        )
    except UserError as error:
        make_console().print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        make_console().print("[yellow]interrupted[/]")
        sys.exit(130)
    except BrokenPipeError:
        _stdout_closed()
    except OSError as error:
        # A full disk, a quota, a read-only file system or a permission met in the middle of the
        # work: the machine's state, not a bug, so one line naming the file (the commands check
        # their output folders before the work, which catches most of these earlier).
        from ava.files import is_storage_error

        if not is_storage_error(error):
            raise
        where = f"{error.filename}: " if error.filename else ""
        make_console().print(f"[bold red]error:[/] {where}{error.strerror or error}", highlight=False)
        sys.exit(2)
    except SystemExit:  # tyro after --help or a usage error
        _flush_stdout()
        raise
    _flush_stdout()
    sys.exit(int(result) if isinstance(result, int) else 0)
