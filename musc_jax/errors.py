"""The one exception type for "you gave me something wrong", and how the CLIs recognise one.

A `UserError` carries one message that names the thing at fault (a file and line, a row, a field,
a config key) and says what to do. The command-line entries print that message alone, with no
traceback, and exit non-zero (`--debug` or MUSC_DEBUG=1 shows the traceback). It subclasses
ValueError so callers that caught ValueError before keep working.

Line numbers follow one convention across tools: `<file>: line N`, 1-based, as an editor counts
them; rows of an Arrow/Parquet dataset or a JSON array are `<file>: row N`, 0-based (the index
that `dataset[N]` takes).
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input, config or environment given by the user; the message says what to change."""


class MissingFileError(UserError, FileNotFoundError):
    """A path named by the user (in a config or an argument) does not exist."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types the CLIs report as one message without a traceback.

    UserError (every named error of the package derives from it) and NonFiniteError, which stays
    a FloatingPointError for callers that catch that; its message names the step and the
    quantity. Imported lazily, so that this module stays importable from anywhere without cycles.
    """
    from musc_jax.metrics import NonFiniteError
    return (UserError, NonFiniteError)
