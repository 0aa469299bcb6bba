"""Per-client flow control for the Channel Access server, as EPICS base's rsrv does it.

Pure parts, no I/O:

* :class:`Coalescer` holds, per subscription, only the latest update not yet
  sent. A newer update replaces the one waiting in its place in the line, so a
  chatty subscription cannot push the others back, and a client that is behind
  costs at most one update per subscription, however long it stays behind.
* :class:`SlowClientBound` says when a client that is behind has been behind
  for too long or has too much waiting for it; the server then disconnects it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """The latest waiting update of each key, in the order the keys first came.

    ``size`` is the caller's estimate of an update's bytes on the wire; the
    total of what waits is :attr:`waiting_bytes`.
    """

    def __init__(self) -> None:
        self._items: dict[K, tuple[V, int]] = {}
        self.waiting_bytes = 0
        self.replaced = 0
        """Updates dropped because a newer one of the same key came (a running count)."""

    def offer(self, key: K, item: V, size: int) -> None:
        old = self._items.get(key)
        if old is not None:
            self.waiting_bytes -= old[1]
            self.replaced += 1
        self._items[key] = (item, size)  # an existing key keeps its place
        self.waiting_bytes += size

    def discard(self, key: K) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.waiting_bytes -= old[1]

    def take(self) -> list[tuple[K, V, int]]:
        """Everything waiting, oldest first; the coalescer is left empty."""
        items, self._items = self._items, {}
        self.waiting_bytes = 0
        return [(key, item, size) for key, (item, size) in items.items()]

    def put_back(self, rest: Iterable[tuple[K, V, int]]) -> None:
        """Return what was taken but not sent, ahead of what came meanwhile.

        A key that came again meanwhile keeps the place of its older update and
        the newer update's content.
        """
        merged: dict[K, tuple[V, int]] = {key: (item, size) for key, item, size in rest}
        for key, (item, size) in self._items.items():
            if key in merged:
                self.replaced += 1
            merged[key] = (item, size)
        self._items = merged
        self.waiting_bytes = sum(size for _, size in merged.values())

    def clear(self) -> None:
        self._items.clear()
        self.waiting_bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


@dataclass(frozen=True)
class SlowClientBound:
    """How far behind a client may fall before it is disconnected.

    A client is *behind* while its connection takes no more data and something
    waits to be sent to it. It is disconnected once it has been behind for
    ``seconds`` without a break, or when, while behind, more than
    ``max_bytes`` wait for it.
    """

    seconds: float
    max_bytes: int

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"seconds must be > 0, not {self.seconds!r}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, not {self.max_bytes!r}")

    def verdict(self, behind_since: float | None, waiting_bytes: int, now: float) -> str | None:
        """None while the client may stay; else the reason it must go, in words."""
        if behind_since is None:
            return None
        behind = now - behind_since
        if waiting_bytes > self.max_bytes:
            return (
                f"{waiting_bytes} bytes waiting for it, {behind:.1f} s behind "
                f"(bound {self.max_bytes} bytes)"
            )
        if behind >= self.seconds:
            return f"behind for {behind:.1f} s (bound {self.seconds:g} s)"
        return None
