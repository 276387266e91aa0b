"""The one exception type that means "the user asked for something that cannot work".

The CLI prints these as a single line (no traceback) and exits with status 2; anything else that
escapes is a bug in ava and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (flags, paths, files, checkpoints) with advice on fixing it."""
