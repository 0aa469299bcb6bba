"""Waiting on a condition with a deadline, never on a guessed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "condition",
    every: float = 0.05,
) -> Any:
    """Poll ``condition`` every ``every`` seconds until it returns something truthy
    (returned), or raise AssertionError after ``timeout`` seconds, naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
