"""Fixtures that start real IOCs: each on its own port from the pool, with its own dirs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.integration import mechanisms
from tests.integration.harness import Ioc


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "config"
    path.mkdir()
    return path


def write_script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(body))
    return path


# Fast supervision so the life cycle fits in seconds; each test may write its own.
FAST_SETTINGS = """
[supervisor]
startsecs = 0.5
stop_timeout = 2.0
backoff_initial = 0.2
backoff_max = 1.0
start_limit_burst = 3
start_limit_interval = 30.0
"""


@pytest.fixture
def make_ioc(tmp_path: Path, port_pool, prefix: str, test_tag: str, config_dir: Path):
    """Build (not start) IOCs; every one is stopped at the end of the test."""
    made: list[Ioc] = []

    def make(settings: str | None = FAST_SETTINGS, **kw) -> Ioc:
        if settings is not None:
            (config_dir / "bgrscrpt.toml").write_text(settings)
        kw.setdefault("prefix", prefix)
        kw.setdefault("port", port_pool.take())
        kw.setdefault("config_dir", config_dir)
        kw.setdefault("var_dir", tmp_path / "var")
        ioc = Ioc(**kw)
        made.append(ioc)
        return ioc

    yield make
    for ioc in made:
        if ioc.proc is not None and ioc.proc.poll() is None:
            ioc.stop()


@pytest.fixture(params=mechanisms.NAMES)
def mechanism(request):
    """A containment mechanism (a cgroup per slot, or the keeper as subreaper): a test
    asking for it runs once with each. Ask for it before ``make_ioc``: its cgroup is
    checked and removed after the IOCs are stopped."""
    if request.param == "cgroup" and not mechanisms.cgroups_usable():
        pytest.skip("needs root and a writable cgroup v2 hierarchy")
    yield from mechanisms.provide(request.param)
