"""Errors a user can act on: the CLI prints their message and exits 1, without a traceback."""


class StageError(RuntimeError):
    """A stage stopped for a reason the user can fix (diverged training, a mismatched rerun...)."""
