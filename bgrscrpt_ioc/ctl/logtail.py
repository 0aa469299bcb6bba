"""Following a LOG PV: which lines of a new window of "the last 20 lines" are new.

LOG shows a sliding window of the script's output; a follower prints only what
the window gained. Pure functions, so the overlap rule is tested without an IOC.
"""

from __future__ import annotations


def log_lines(text: str) -> list[str]:
    """The lines of a LOG value (a trailing newline makes no empty last line)."""
    return text.splitlines()


def new_lines(old: list[str], new: list[str]) -> list[str]:
    """The lines at the end of ``new`` that ``old`` did not show.

    The window moved forward by the longest overlap: the longest tail of ``old``
    that is also the head of ``new``. No overlap at all means more lines arrived
    than the window holds, or the log started afresh: then every line is new.
    """
    return window_moved(old, new)[0]


def window_moved(old: list[str], new: list[str]) -> tuple[list[str], bool]:
    """The lines ``new`` gained over ``old``, and whether lines may be missing between
    them: both windows show lines and none of ``old``'s last lines begins ``new``
    (more arrived than the window holds: after an outage, or from a client that was
    sent only the latest of several updates)."""
    for size in range(min(len(old), len(new)), 0, -1):
        if old[-size:] == new[:size]:
            return new[size:], False
    return list(new), bool(old) and bool(new)
