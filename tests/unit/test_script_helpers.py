"""What a script sees: the KIT_ROOT shim of IBEX's server_common.helpers, and its environment."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bgrscrpt_ioc.supervisor.env import kit_root, own_ca_address, script_environment
from bgrscrpt_ioc.supervisor.notify import NotifyListener

TIMEOUT = 20.0

# The lines an existing IBEX background script starts with.
IBEX_SCRIPT = """
import os, sys, json
sys.path.insert(0, os.path.join(os.environ["KIT_ROOT"], "ISIS", "inst_servers", "master"))
from server_common.helpers import register_ioc_start, get_macro_values
register_ioc_start("BGRSCRPT_01")
print("macros", json.dumps(get_macro_values()), flush=True)
"""


@pytest.fixture
def helpers():
    """The shim loaded straight from its file, without touching sys.path."""
    path = kit_root() / "ISIS" / "inst_servers" / "master" / "server_common" / "helpers.py"
    spec = importlib.util.spec_from_file_location("kit_server_common_helpers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def run_script(source: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(source),
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ibex_script_registers_through_the_kit(tmp_path):
    received: list[dict[str, str]] = []
    arrived = asyncio.Event()

    def on_message(fields: dict[str, str]) -> None:
        received.append(fields)
        arrived.set()

    listener = NotifyListener("BGRSCRPT_01", on_message)
    listener.open(asyncio.get_running_loop())
    try:
        env = script_environment(
            os.environ,
            slot="BGRSCRPT_01",
            config_dir=tmp_path,
            var_dir=tmp_path / "var",
            kit_root=kit_root(),
            notify_socket=listener.address,
            prefix="TE:TEST:",
            macros={"BLOCK": "TEMP1", "LIMIT": "3"},
        )
        code, out, err = await run_script(IBEX_SCRIPT, env, tmp_path)
        await asyncio.wait_for(arrived.wait(), TIMEOUT)
    finally:
        listener.close()
    assert code == 0, err
    assert received == [{"READY": "1", "IOC_NAME": "BGRSCRPT_01"}]
    defined, macros = out.splitlines()
    assert defined == "Defined macros: {'BLOCK': 'TEMP1', 'LIMIT': '3'}"  # as IBEX prints
    assert json.loads(macros.split(" ", 1)[1]) == {"BLOCK": "TEMP1", "LIMIT": "3"}
    assert err == ""


async def test_ibex_script_runs_without_the_ioc(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "MACROS")}
    env["KIT_ROOT"] = str(kit_root())
    code, out, err = await run_script(IBEX_SCRIPT, env, tmp_path)
    assert code == 0, err
    assert out == "Defined macros: {}\nmacros {}\n"
    assert "register_ioc_start(BGRSCRPT_01): not registered" in err


def test_register_without_notify_socket_does_not_raise(helpers, monkeypatch, capsys):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert helpers.register_ioc_start("BGRSCRPT_02") is None
    assert "no NOTIFY_SOCKET" in capsys.readouterr().err


async def test_register_to_dead_socket_does_not_raise(helpers, monkeypatch, capsys):
    listener = NotifyListener("BGRSCRPT_02", lambda fields: None)
    listener.open(asyncio.get_running_loop())
    listener.close()
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    helpers.register_ioc_start("BGRSCRPT_02", pv_database={"A": {}}, prefix="TE:")
    assert "send failed" in capsys.readouterr().err


def test_register_never_raises_even_if_everything_fails(helpers, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "@x")

    def broken(**fields):
        raise RuntimeError("broken")

    monkeypatch.setattr("bgrscrpt_ioc.script.notify", broken)
    monkeypatch.setattr(sys, "stderr", None)  # even printing the warning fails
    helpers.register_ioc_start("BGRSCRPT_03")


def test_get_macro_values(helpers, monkeypatch):
    monkeypatch.delenv("MACROS", raising=False)
    assert helpers.get_macro_values() == {}
    monkeypatch.setenv("MACROS", '{"A": "1", "B": "two"}')
    assert helpers.get_macro_values() == {"A": "1", "B": "two"}
    monkeypatch.setenv("MACROS", "[1]")
    with pytest.raises(ValueError):
        helpers.get_macro_values()


def test_ibex_constants_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MYPVPREFIX", "IN:EMU:")
    monkeypatch.setenv("ICPVARDIR", "/var/x")
    path = kit_root() / "ISIS" / "inst_servers" / "master" / "server_common" / "helpers.py"
    spec = importlib.util.spec_from_file_location("kit_helpers_env", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.CONTROL_SYSTEM_PREFIX == "IN:EMU:CS:"
    assert module.MACROS["$(MYPVPREFIX)"] == "IN:EMU:"
    assert module.MACROS["$(ICPVARDIR)"] == "/var/x"
    assert (module.PVPREFIX_MACRO, module.BLOCK_PREFIX) == ("$(MYPVPREFIX)", "CS:SB:")
    with pytest.raises(AttributeError):
        module.not_there  # noqa: B018


def test_kit_root_holds_the_shim():
    root = kit_root()
    assert (root / "ISIS" / "inst_servers" / "master" / "server_common" / "helpers.py").is_file()
    assert not (root / "__init__.py").exists()  # a data directory, not a package


def env_for(base: dict[str, str], **overrides) -> dict[str, str]:
    kwargs: dict[str, Any] = dict(
        slot="BGRSCRPT_02",
        config_dir=Path("/cfg"),
        var_dir=Path("/var/bg"),
        kit_root=Path("/kit"),
        notify_socket="@bgrscrpt/abc/BGRSCRPT_02",
        prefix="IN:DEMO:",
    )
    kwargs.update(overrides)
    return script_environment(base, **kwargs)


def test_script_environment_sets_the_contract():
    base = {"PATH": "/bin", "MYPVPREFIX": "OLD:", "NOTIFY_SOCKET": "/run/systemd/notify"}
    env = env_for(base)
    assert env["PATH"] == "/bin"
    assert env["MYPVPREFIX"] == "IN:DEMO:"
    assert env["KIT_ROOT"] == env["EPICS_KIT_ROOT"] == "/kit"
    assert env["ICPINSTSCRIPTROOT"] == "/cfg"
    assert env["ICPVARDIR"] == "/var/bg"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["BGRSCRPT_IOC_NAME"] == "BGRSCRPT_02"
    assert env["NOTIFY_SOCKET"] == "@bgrscrpt/abc/BGRSCRPT_02"
    assert "MACROS" not in env
    assert env["EPICS_CA_ADDR_LIST"] == "127.0.0.1"
    assert env["EPICS_CA_AUTO_ADDR_LIST"] == "NO"
    assert base == {"PATH": "/bin", "MYPVPREFIX": "OLD:", "NOTIFY_SOCKET": "/run/systemd/notify"}


def test_script_environment_inherits_var_dir_ca_and_sets_macros():
    base = {
        "ICPVARDIR": "/instrument/var",
        "EPICS_CA_ADDR_LIST": "127.0.0.1:5066",
        "EPICS_CA_AUTO_ADDR_LIST": "YES",
        "EPICS_CA_SERVER_PORT": "5066",
    }
    env = env_for(base, macros={"A": "1"})
    assert env["ICPVARDIR"] == "/instrument/var"
    assert env["EPICS_CA_ADDR_LIST"] == "127.0.0.1:5066"
    assert env["EPICS_CA_AUTO_ADDR_LIST"] == "YES"
    assert env["EPICS_CA_SERVER_PORT"] == "5066"
    assert json.loads(env["MACROS"]) == {"A": "1"}


def test_a_script_always_finds_its_own_ioc():
    """An address list naming only other machines gets the IOC's own address first; one
    that names it already, or no list at all, is left to mean what it meant."""
    remote = {"EPICS_CA_ADDR_LIST": "ndxother:5064 10.1.2.3", "EPICS_CA_AUTO_ADDR_LIST": "NO"}
    env = env_for(remote, own_ca_address="127.0.0.1:5066")
    assert env["EPICS_CA_ADDR_LIST"] == "127.0.0.1:5066 ndxother:5064 10.1.2.3"
    assert env["EPICS_CA_AUTO_ADDR_LIST"] == "NO"
    named = {"EPICS_CA_ADDR_LIST": "10.1.2.3 127.0.0.1:5066"}
    assert env_for(named, own_ca_address="127.0.0.1:5066")["EPICS_CA_ADDR_LIST"] == (
        "10.1.2.3 127.0.0.1:5066"
    )
    assert env_for({}, own_ca_address="10.0.0.5:5066")["EPICS_CA_ADDR_LIST"] == "10.0.0.5:5066"
    # Where a process here finds the IOC: loopback, unless it serves elsewhere only.
    assert own_ca_address(["127.0.0.1"], 5066) == "127.0.0.1:5066"
    assert own_ca_address(["0.0.0.0"], 5064) == "127.0.0.1:5064"
    assert own_ca_address(["10.0.0.5", "10.0.1.5"], 5064) == "10.0.0.5:5064"
