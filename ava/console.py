"""Where messages and progress go: rich consoles on stderr (or stdout) that read well both on a
terminal and in a log file.

A printed line is never broken by rich (soft wrap), so a path or URL stays whole and can be
copied from a terminal or found with grep in a log. Tables and progress bars are laid out at the
terminal's width on a terminal; elsewhere (a log file, a pipe, a cluster job's output) rich would
assume 80 columns, so they are laid out `LOG_WIDTH` columns wide ($COLUMNS, when set, wins).
"""

from __future__ import annotations

import os

from rich.console import Console

LOG_WIDTH = 200
"""Layout width of tables and progress lines when the output is not a terminal."""


def make_console(stderr: bool = True) -> Console:
    """A rich Console on stderr (default) or stdout that never breaks a printed line; tables and
    progress at the terminal's width on a terminal, else `LOG_WIDTH` (or $COLUMNS) columns."""
    console = Console(stderr=stderr, soft_wrap=True)
    if not console.is_terminal:
        columns = os.environ.get("COLUMNS", "")
        console.width = int(columns) if columns.isdigit() and int(columns) > 0 else LOG_WIDTH
    return console
