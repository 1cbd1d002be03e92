"""Every user-error class of recarena, importing nothing: a command can catch them (one line, exit code 2)
without loading torch or the data layer."""

from __future__ import annotations


class ConfigError(ValueError):
    """An option or a combination of options that cannot work; the message says which and what to use."""


class DataError(ValueError):
    """Bad input data: the message names the file (and line or field) and how to fix it."""


class RunError(ValueError):
    """A run dir that cannot be used as asked (missing or incompatible files, unknown user, title or k): the
    message names the run dir and what to do."""


class StorageError(OSError):
    """The disk (or quota) filled up while recarena wrote a file: the message names it and where else to write."""


#: What ``recarena.cli_errors.exit_on_user_error`` turns into one line and exit code 2.
USER_ERRORS = (ConfigError, DataError, RunError, StorageError)


def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` of an error that is not ours (a damaged file's reader, a library), for a
    user error that names the file it came from."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
