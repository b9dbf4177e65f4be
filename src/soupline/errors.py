"""The one exception type users see: a single line saying what is wrong and how to fix it.

Anything raised as `SouplineError` is printed by the CLI and the stage entry points as
`error: <message>` with exit code 2 and no traceback; everything else is a bug and keeps
its traceback.
"""


class SouplineError(Exception):
    """A user-facing error (bad params, bad input data, missing artifact)."""


# What the CLI and the stage entry points print as one `error: ` line (`message`), not a traceback.
USER_ERRORS = (SouplineError, PermissionError)


def message(err: SouplineError | PermissionError) -> str:
    """The line the CLI and the stage entry points print after `error: `. A PermissionError is the file system's
    answer to this user (a data source, model folder or output it may not read or write), not a bug."""
    if isinstance(err, PermissionError):
        return (f"permission denied: {err.filename or err}; give the user running soupline access to it (chmod, "
                "chown), or run as its owner")
    return str(err)
