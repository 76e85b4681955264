"""Errors a user can act on: the CLI prints their message, without a traceback, and exits with
their `exit_code`."""


class StageError(RuntimeError):
    """A stage stopped for a reason the user can fix (diverged training, a mismatched rerun, a full
    disk...): exit status 1."""

    exit_code = 1


class InputError(StageError):
    """What the user asked for cannot be read as given (an input pattern that matches nothing, `out=`
    that is a file, a broken benchmark folder): exit status 2, as for a config error."""

    exit_code = 2
