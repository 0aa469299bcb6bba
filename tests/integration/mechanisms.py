"""The two containment mechanisms, for tests that run once with each.

``cgroup``: the IOC is started inside a cgroup of the test's own (named
``containment-test-…``), so it nests its cgroups below it, and the test checks
they are gone at the end. ``subreaper``: ``BGRSCRPT_CONTAINMENT=subreaper``.
The ``mechanism`` fixture (in conftest.py) gives one of them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.harness import Ioc, wait_for

UNIFIED = Path("/sys/fs/cgroup/unified")
CGROUP_ROOT = UNIFIED if (UNIFIED / "cgroup.procs").exists() else Path("/sys/fs/cgroup")
NAMES = ("cgroup", "subreaper")


@dataclass
class Mechanism:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    cgroup: Path | None = None  # the test's cgroup, in which the IOC is started

    def preexec(self) -> Callable[[], None] | None:
        if self.cgroup is None:
            return None
        procs = str(self.cgroup / "cgroup.procs")

        def enter() -> None:
            with open(procs, "w") as f:
                f.write("0")

        return enter

    def ioc_cgroups(self) -> list[Path]:
        """The cgroups the IOC made below the test's cgroup."""
        if self.cgroup is None:
            return []
        return sorted(p for p in self.cgroup.rglob("*") if p.is_dir())


def cgroups_usable() -> bool:
    return os.geteuid() == 0 and os.access(CGROUP_ROOT / "cgroup.procs", os.W_OK)


def provide(name: str) -> Iterator[Mechanism]:
    """The fixture's body: make the test's cgroup, and check and remove it at the end."""
    if name == "subreaper":
        yield Mechanism("subreaper", {"BGRSCRPT_CONTAINMENT": "subreaper"})
        return
    path = CGROUP_ROOT / f"containment-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield Mechanism("cgroup", {"BGRSCRPT_CONTAINMENT": "cgroup"}, path)
    finally:
        # The IOC's keeper removes its cgroups when it ends; anything left fails the test.
        left = [p for p in path.rglob("*") if p.is_dir()]
        try:
            wait_for(lambda: not (path / "cgroup.procs").read_text(), 10, "the test cgroup empty")
        finally:
            for sub in sorted(left, key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                path.rmdir()
        assert not left, f"cgroups left behind: {left}"


def start(make_ioc: Callable[..., Ioc], mechanism: Mechanism, settings: str, **kw: Any) -> Ioc:
    """Start an IOC under ``mechanism``; check the one line that says which is in force."""
    kw.setdefault("slots", 1)
    ioc = make_ioc(settings, env=mechanism.env, preexec_fn=mechanism.preexec(), **kw).start()
    expected = {
        "cgroup": "containment: one cgroup per slot under ",
        "subreaper": "containment: the keeper as child subreaper",
    }[mechanism.name]
    wait_for(lambda: expected in ioc.output(), 5, f"the line {expected!r} in the IOC's log")
    return ioc
