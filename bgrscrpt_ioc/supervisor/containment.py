"""What keeps all of a script's processes together: a cgroup per slot, or the keeper.

Two mechanisms, both with the keeper (``keeper.py``) as every script's parent
and child subreaper:

- **cgroup**: each slot has a cgroup v2 directory, ``<own>/bgrscrpt-<id>/BGRSCRPT_NN``
  below the IOC's own cgroup (``<own>``, from /proc/self/cgroup) on the cgroup2
  mount: ``/sys/fs/cgroup`` on a pure v2 machine, ``/sys/fs/cgroup/unified`` on a
  hybrid one. Every process a script starts is in it whatever its session; it is
  killed at once with ``cgroup.kill``; CPU comes from its ``cpu.stat``. Needs
  write access to ``<own>`` (root, or a cgroup delegated to the IOC's user, e.g.
  systemd's ``Delegate=yes``).
- **subreaper**: no usable cgroup (not root and not delegated, read-only, no
  cgroup2 mount). The keeper, the scripts' ancestor, is a child subreaper, and
  every script's environment carries ``BGRSCRPT_MARK=<id>/<slot>``: what a
  script starts stays below the keeper and is found by its ancestry or marker.

``<id>`` is this IOC's instance id, derived from its var dir, so the IOC that
starts next on the same var dir finds what the last one left (``leftovers.py``).
``BGRSCRPT_CONTAINMENT`` = ``auto`` (default), ``cgroup`` (fail if impossible) or
``subreaper`` chooses.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .guardian import KeeperConfig

MODE_VAR = "BGRSCRPT_CONTAINMENT"
MODES = ("auto", "cgroup", "subreaper")
PREFERRED_MOUNT = "/sys/fs/cgroup"


class ContainmentError(Exception):
    """``BGRSCRPT_CONTAINMENT`` is invalid, or asks for cgroups this machine cannot give."""


class CgroupUnusable(Exception):
    """Why no cgroup can be used here (one line)."""


@dataclass(frozen=True)
class Containment:
    """The mechanism in force for one IOC, and where its slots' cgroups are."""

    mechanism: str  # "cgroup" or "subreaper"
    instance: str
    base: Path | None = None
    slots: dict[str, Path] = field(default_factory=dict)
    why: str = ""  # subreaper: why not cgroups

    def describe(self) -> str:
        """One line for the log at start-up."""
        if self.mechanism == "cgroup":
            memory = "memory.stat" if self.memory_controller() else "/proc"
            return (
                f"containment: one cgroup per slot under {self.base} (cgroup v2; "
                f"CPU from cpu.stat, RSS from {memory})"
            )
        return (
            f"containment: the keeper as child subreaper, scripts marked "
            f"BGRSCRPT_MARK={self.instance}/<slot>; no cgroups: {self.why}"
        )

    def keeper_config(self) -> KeeperConfig:
        return KeeperConfig(
            instance=self.instance,
            cgroups={slot: str(path) for slot, path in self.slots.items()},
            base=None if self.base is None else str(self.base),
        )

    def memory_controller(self) -> bool:
        """The slots' cgroups have ``memory.stat`` (the memory controller is on for them)."""
        return any((path / "memory.stat").exists() for path in self.slots.values())


def instance_id(var_dir: Path) -> str:
    """The id of the IOC that uses ``var_dir`` (only one can: it is locked)."""
    return hashlib.sha256(str(var_dir.resolve()).encode()).hexdigest()[:12]


def base_name(instance: str) -> str:
    return f"bgrscrpt-{instance}"


def detect(
    var_dir: Path,
    slots: list[str],
    *,
    mode: str | None = None,
    proc: Path = Path("/proc"),
) -> Containment:
    """Choose the mechanism and make the slots' cgroups (existing ones are kept).

    Raises ContainmentError for a bad ``mode`` or a forced ``cgroup`` that cannot be.
    """
    mode = (mode if mode is not None else os.environ.get(MODE_VAR, "auto")).strip() or "auto"
    if mode not in MODES:
        raise ContainmentError(f"{MODE_VAR}={mode!r}: must be one of {', '.join(MODES)}")
    instance = instance_id(var_dir)
    if mode == "subreaper":
        return Containment("subreaper", instance, why=f"{MODE_VAR}=subreaper")
    try:
        base = own_cgroup(proc) / base_name(instance)
        made = {slot: base / slot for slot in slots}
        for path in made.values():
            path.mkdir(parents=True, exist_ok=True)
            if not os.access(path / "cgroup.procs", os.W_OK):
                raise CgroupUnusable(f"cannot write {path / 'cgroup.procs'}")
    except CgroupUnusable as exc:
        if mode == "cgroup":
            raise ContainmentError(f"{MODE_VAR}=cgroup: {exc}") from None
        return Containment("subreaper", instance, why=str(exc))
    except OSError as exc:
        why = f"cannot make cgroups under {exc.filename or '?'}: {exc.strerror or exc}"
        if mode == "cgroup":
            raise ContainmentError(f"{MODE_VAR}=cgroup: {why}") from None
        return Containment("subreaper", instance, why=why)
    return Containment("cgroup", instance, base=base, slots=made)


def own_cgroup(proc: Path = Path("/proc")) -> Path:
    """The directory of this process's cgroup v2. Raises CgroupUnusable (saying why)."""
    mount = cgroup2_mount(proc)
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError as exc:
        raise CgroupUnusable(f"cannot read {proc}/self/cgroup: {exc.strerror}") from None
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if own is None:
        raise CgroupUnusable(f"this process is in no cgroup v2 ({proc}/self/cgroup)")
    mount_point, mount_root = mount
    # Inside a cgroup namespace the path is relative to the namespace's root.
    if mount_root != "/" and own.startswith(mount_root):
        own = own[len(mount_root) :] or "/"
    path = Path(mount_point + own.rstrip("/") if own != "/" else mount_point)
    if not path.is_dir():
        raise CgroupUnusable(f"{path} (this process's cgroup) is not there")
    if not os.access(path / "cgroup.procs", os.W_OK):
        raise CgroupUnusable(
            f"cannot write {path / 'cgroup.procs'}: not root, and this cgroup is not "
            "delegated (systemd: Delegate=yes)"
        )
    return path


def cgroup2_mount(proc: Path = Path("/proc")) -> tuple[str, str]:
    """(mount point, root) of the cgroup2 hierarchy, /sys/fs/cgroup first. Raises CgroupUnusable."""
    try:
        text = (proc / "self" / "mountinfo").read_text()
    except OSError as exc:
        raise CgroupUnusable(f"cannot read {proc}/self/mountinfo: {exc.strerror}") from None
    found: list[tuple[str, str, bool]] = []
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype = line.split(" - ", 1)[1].split()[0]
        if fstype != "cgroup2":
            continue
        options = fields[5].split(",")
        found.append((_unescape(fields[4]), _unescape(fields[3]), "ro" in options))
    if not found:
        raise CgroupUnusable("no cgroup2 file system is mounted")
    found.sort(key=lambda m: m[0] != PREFERRED_MOUNT)
    point, root, read_only = found[0]
    if read_only:
        raise CgroupUnusable(f"{point} is mounted read-only")
    return point, root


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
