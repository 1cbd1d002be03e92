"""User errors end a command with one clear line and exit code 2, not a traceback (``RECARENA_DEBUG=1`` shows it)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from recarena.errors import USER_ERRORS


@contextlib.contextmanager
def exit_on_user_error(debug: bool = False) -> Iterator[None]:
    """``debug`` (a command's ``--debug``) re-raises, as ``RECARENA_DEBUG=1`` does."""
    try:
        yield
    except USER_ERRORS as error:
        if debug or os.environ.get("RECARENA_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
