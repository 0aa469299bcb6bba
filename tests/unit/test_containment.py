"""Choosing the mechanism from /proc/self/mountinfo and /proc/self/cgroup.

A fake /proc (the two files) and a fake cgroup2 mount (a directory where each
cgroup has a ``cgroup.procs`` file, as cgroupfs makes it) stand for a pure v2
systemd machine, a hybrid one like this one, a read-only mount, no cgroup2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bgrscrpt_ioc.supervisor import proctree
from bgrscrpt_ioc.supervisor.containment import (
    ContainmentError,
    base_name,
    detect,
    instance_id,
)

SLOTS = ["BGRSCRPT_01", "BGRSCRPT_02"]


def fake_machine(tmp_path: Path, mounts: list[tuple[str, str, str]], own: str) -> Path:
    """A fake /proc: ``mounts`` as (mount point, root, options) of cgroup2 file systems
    (the mount point made relative to ``tmp_path``), this process in cgroup ``own``."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    lines = ["22 1 0:21 / /proc rw,nosuid - proc proc rw"]
    for i, (point, root, options) in enumerate(mounts):
        where = tmp_path / point.lstrip("/")
        lines.append(
            f"{30 + i} 25 0:{30 + i} {root} {where} {options} shared:9 - cgroup2 cgroup2 rw"
        )
    lines.append("40 25 0:40 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory")
    (proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n")
    (proc / "self" / "cgroup").write_text(f"4:memory:/somewhere\n0::{own}\n")
    return proc


def cgroupfs(path: Path) -> Path:
    """A directory that looks like a cgroup: with its cgroup.procs."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.procs").touch()
    return path


def pre_make_slots(base: Path) -> None:
    for slot in SLOTS:
        cgroupfs(base / slot)


def test_pure_v2_under_systemd_uses_a_sub_cgroup_of_the_service(tmp_path):
    service = "/system.slice/bgrscrpt-ioc.service"
    proc = fake_machine(tmp_path, [("/sys/fs/cgroup", "/", "rw,nosuid")], service)
    own = cgroupfs(tmp_path / f"sys/fs/cgroup{service}")
    var = tmp_path / "var"
    pre_make_slots(own / base_name(instance_id(var)))
    found = detect(var, SLOTS, mode="auto", proc=proc)
    assert found.mechanism == "cgroup"
    assert found.base == own / base_name(instance_id(var))
    assert found.slots == {slot: found.base / slot for slot in SLOTS}
    assert "one cgroup per slot under" in found.describe()
    config = found.keeper_config()
    assert config.base == str(found.base) and set(config.cgroups) == set(SLOTS)


def test_hybrid_uses_the_unified_hierarchy(tmp_path):
    proc = fake_machine(tmp_path, [("/sys/fs/cgroup/unified", "/", "rw")], "/")
    root = cgroupfs(tmp_path / "sys/fs/cgroup/unified")
    var = tmp_path / "var"
    pre_make_slots(root / base_name(instance_id(var)))
    found = detect(var, SLOTS, mode="auto", proc=proc)
    assert found.base == root / base_name(instance_id(var))


def test_inside_a_cgroup_namespace_the_path_is_relative_to_its_root(tmp_path):
    proc = fake_machine(tmp_path, [("/sys/fs/cgroup", "/lxc/box", "rw")], "/lxc/box/ioc")
    own = cgroupfs(tmp_path / "sys/fs/cgroup/ioc")
    var = tmp_path / "var"
    pre_make_slots(own / base_name(instance_id(var)))
    assert detect(var, SLOTS, mode="auto", proc=proc).base == own / base_name(instance_id(var))


@pytest.mark.parametrize(
    ("mounts", "why"),
    [
        ([], "no cgroup2 file system is mounted"),
        ([("/sys/fs/cgroup", "/", "ro,nosuid")], "mounted read-only"),
    ],
)
def test_without_a_usable_cgroup2_the_keeper_is_the_subreaper(tmp_path, mounts, why):
    proc = fake_machine(tmp_path, mounts, "/")
    cgroupfs(tmp_path / "sys/fs/cgroup")
    found = detect(tmp_path / "var", SLOTS, mode="auto", proc=proc)
    assert found.mechanism == "subreaper" and why in found.why
    assert found.base is None and found.slots == {}
    assert found.keeper_config().cgroups == {}
    assert f"BGRSCRPT_MARK={found.instance}/<slot>" in found.describe()
    with pytest.raises(ContainmentError, match=why):
        detect(tmp_path / "var", SLOTS, mode="cgroup", proc=proc)


NOT_ROOT = """
from pathlib import Path
from bgrscrpt_ioc.supervisor.containment import detect
found = detect(Path("/nonexistent/var"), ["BGRSCRPT_01"], mode="auto")
print(found.mechanism, found.why)
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="root and setpriv")
def test_not_root_on_this_machine_the_keeper_is_the_subreaper():
    """The real /proc and cgroup mounts, as user nobody: the IOC's own cgroup is not
    writable (not delegated), so no cgroup is used, and the reason says how to fix it."""
    out = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            NOT_ROOT,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    mechanism, why = out.stdout.strip().split(" ", 1)
    assert mechanism == "subreaper"
    assert "not root, and this cgroup is not delegated (systemd: Delegate=yes)" in why


def test_forced_subreaper_and_a_bad_mode(tmp_path):
    proc = fake_machine(tmp_path, [("/sys/fs/cgroup", "/", "rw")], "/")
    found = detect(tmp_path / "var", SLOTS, mode="subreaper", proc=proc)
    assert (found.mechanism, found.why) == ("subreaper", "BGRSCRPT_CONTAINMENT=subreaper")
    with pytest.raises(ContainmentError, match="must be one of auto, cgroup, subreaper"):
        detect(tmp_path / "var", SLOTS, mode="systemd", proc=proc)


def test_instance_id_is_per_var_dir(tmp_path):
    assert instance_id(tmp_path / "a") == instance_id(tmp_path / "b" / ".." / "a")
    assert instance_id(tmp_path / "a") != instance_id(tmp_path / "b")


def test_marked_finds_only_this_instance():
    """The sweep's search: a process with another instance's marker is a stranger."""
    ours, other = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    code = "import time; time.sleep(60)"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "BGRSCRPT_MARK": mark})
        for mark in (f"{ours}/BGRSCRPT_01", f"{other}/BGRSCRPT_01", f"{ours}x/BGRSCRPT_01")
    ]
    try:
        assert proctree.marked(ours) == [procs[0].pid]
        assert proctree.marked(ours, "BGRSCRPT_01") == [procs[0].pid]
        assert proctree.marked(ours, "BGRSCRPT_02") == []
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_usage_read_from_cgroup_files(tmp_path):
    """cpu.stat and memory.stat as cgroup v2 writes them (memory only with the controller)."""
    from bgrscrpt_ioc.supervisor import cgroups

    (tmp_path / "cpu.stat").write_text(
        "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n"
    )
    (tmp_path / "cgroup.procs").write_text("10\n11\n")
    assert cgroups.cpu_usec(str(tmp_path)) == 1234567
    assert cgroups.procs(str(tmp_path)) == [10, 11]
    assert cgroups.memory_bytes(str(tmp_path)) is None  # no memory controller here
    (tmp_path / "memory.stat").write_text("anon 4096000\nfile 9999999\nfile_mapped 1000\nshmem 0\n")
    assert cgroups.memory_bytes(str(tmp_path)) == 4096000 + 1000  # the page cache is not RSS
    gone = tmp_path / "gone"
    assert cgroups.cpu_usec(str(gone)) is None and cgroups.procs(str(gone)) == []
    assert not cgroups.populated(str(gone))
