"""What every entry point shares: user errors printed as one clear message, not a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from semseg.errors import SemsegError

T = TypeVar("T")


def user_message(error: SemsegError) -> str:
    """The error's own words, without the worker traceback that a DataLoader worker prepends
    when it re-raises an exception in the main process."""
    message = str(error)
    marker = f"{type(error).__module__}.{type(error).__name__}: "
    return message.rsplit(marker, 1)[1].strip() if marker in message else message


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Runs ``main``; a ``SemsegError`` (bad data or config) prints its message and exits 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except SemsegError as error:
            print(f"error: {user_message(error)}", file=sys.stderr)
            sys.exit(2)

    return wrapper
