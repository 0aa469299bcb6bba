"""Which PV names a Channel Access search can carry: checked before a client takes them.

caproto's clients queue a name for a search thread (or task) that builds the
search request later; a name the request refuses ends that thread, and from
then on no PV of the context connects. So every name is checked when it is
asked for, in the caller, against what the request will accept:

- a ``str`` (libca takes nothing else), without a NUL;
- 1 to ``MAX_NAME_BYTES`` bytes in UTF-8: libca's own limit (the name and its
  NUL in one search datagram of 1024 bytes after the 16-byte header);
- a record part (before the first ``.``) of at most ``MAX_RECORD_CHARS``
  characters: caproto's search request refuses a longer one (libca would
  search it, and find it only through a gateway serving such aliases).
"""

from __future__ import annotations

from collections.abc import Iterable

from caproto import MAX_RECORD_LENGTH

MAX_NAME_BYTES = 1007
MAX_RECORD_CHARS: int = MAX_RECORD_LENGTH


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be searched for, in words; None when it can."""
    if not isinstance(name, str):
        return f"a PV name must be text, not {type(name).__name__}"
    if "\0" in name:
        return "a PV name cannot hold a NUL character"
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 0 < size <= MAX_NAME_BYTES:
        return f"a PV name must be 1 to {MAX_NAME_BYTES} bytes, not {size}"
    record = name.partition(".")[0]
    if len(record) > MAX_RECORD_CHARS:
        return (
            f"the record name {record[:20]!r}… has {len(record)} characters: "
            f"at most {MAX_RECORD_CHARS} can be searched for"
        )
    return None


def check_names(names: Iterable[object]) -> None:
    """Raise TypeError (not text) or ValueError for the first name that cannot be searched."""
    for name in names:
        problem = name_problem(name)
        if problem is not None:
            raise (ValueError if isinstance(name, str) else TypeError)(problem)
