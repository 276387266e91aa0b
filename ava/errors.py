"""The one exception type that means "the user asked for something that cannot work".

The CLI prints these as a single line (no traceback) and exits with status 2; anything else that
escapes is a bug in ava and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (flags, paths, files, checkpoints) with advice on fixing it."""


def run_tool(main) -> None:
    """Calls `main()` for a script in tools/, as the ava CLI runs its commands: a UserError becomes
    one line on stderr ("error: ...") and exit status 2 instead of a traceback."""
    import sys

    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
