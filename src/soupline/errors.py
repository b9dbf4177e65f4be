"""The one exception type users see: a single line saying what is wrong and how to fix it.

Anything raised as `SouplineError` is printed by the CLI and the stage entry points as
`error: <message>` with exit code 2 and no traceback; everything else is a bug and keeps
its traceback.
"""


class SouplineError(Exception):
    """A user-facing error (bad params, bad input data, missing artifact)."""
