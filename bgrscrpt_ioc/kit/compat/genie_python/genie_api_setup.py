"""The one API instance behind ``genie``, and how genie commands report errors.

As in genie_python, every command catches what goes wrong, prints the
traceback to stderr and returns ``None``, so that a script keeps running;
``genie.toggle.exceptions_raised(True)`` makes commands raise instead.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from genie_python.genie_epics_api import API

T = TypeVar("T")

_exceptions_raised = False

# As genie_python: the API exists from import on; set_instrument gives it a prefix.
my_pv_prefix = os.environ.get("MYPVPREFIX")
_api = API()

USER_SCRIPT_DIR = ""  # genie_python's "C:/scripts/", which does not exist here


def log_command_and_handle_exception(f: Callable[..., T]) -> Callable[..., T]:
    """Run the command; on an exception print its traceback to stderr and return None."""

    @functools.wraps(f)
    def decorator(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except Exception as exc:
            if _exceptions_raised:
                raise
            _print_traceback(exc)
            return None

    decorator.__signature__ = inspect.signature(f)  # type: ignore[attr-defined]
    return decorator


def _print_traceback(exc: BaseException) -> None:
    try:
        traceback.print_exception(exc, file=sys.stderr)
        sys.stderr.flush()
    except Exception:  # a closed stderr must not end the script
        pass


def usercommand(func: Callable[..., T]) -> Callable[..., T]:
    """Marks a user command (as genie_python, for consoles that list them)."""
    func.is_usercommand = True  # type: ignore[attr-defined]
    func.is_hidden = False  # type: ignore[attr-defined]
    return func


def helparglist(args: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Gives a command the argument list its help shows."""

    def deco(func: Callable[..., T]) -> Callable[..., T]:
        func.help_arglist = args  # type: ignore[attr-defined]
        return func

    return deco


def get_user_script_dir() -> str:
    return USER_SCRIPT_DIR


def set_user_script_dir(*directory: str) -> None:
    global USER_SCRIPT_DIR
    path = os.path.join(*directory)
    if not os.path.isdir(path):
        os.makedirs(path)
    USER_SCRIPT_DIR = path if path.endswith("/") else path + "/"
