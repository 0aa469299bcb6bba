"""The command line of the real IOC: bad settings and options, the var dir lock,
``--list-pvs``, the server port and a readable log.

A bad option or settings file must be exactly one line on stderr and exit
status 2, never a traceback, and must start nothing: no IOC, no var dir.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import epics
import pytest

from devsupport.ports import free_ca_port as _free_port
from tests.integration.conftest import write_script
from tests.integration.harness import Ioc, process_gone, wait_for

PROG = "bgrscrpt-ioc: error: "

SLOT_PVS = (
    "START", "STOP", "RESTART", "STATUS", "HEARTBEAT", "PID", "START_CNT", "EXIT_CODE",
    "UPTIME", "REGISTERED", "AUTORESTART", "WATCHDOG", "SCRIPT", "MSG", "LOG", "PLOT_URL",
)  # fmt: skip
IOC_PVS = ("HEARTBEAT", "UPTIME", "VERSION")

QUIET_SCRIPT = """
import time
while True:
    time.sleep(0.2)
"""


def run_cli(args: list[str], *, cwd: Path, env: dict[str, str] | None = None, unset=()):
    """Run ``python -m bgrscrpt_ioc ARGS`` to completion (it must not start serving)."""
    environ = dict(os.environ)
    for name in unset:
        environ.pop(name, None)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bgrscrpt_ioc", *args],
        cwd=cwd,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single line a refused start prints; checks status 2 and nothing else printed."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PROG), lines[0]
    return lines[0][len(PROG) :]


# ---- the settings file ------------------------------------------------------------

BAD_SETTINGS = [
    # (what, file text, line, key named in the message)
    ("not TOML", "[supervisor]\nstartsecs = 1\n[slots\n", 3, "not valid TOML"),
    ("not TOML: a duplicate table", "[supervisor]\n[supervisor]\n", 2, "not valid TOML"),
    ("unknown key", "[supervisor]\nstartsecs = 1\nstop_timout = 3\n", 3, "supervisor.stop_timout"),
    ("unknown table", "# settings\n\n[supervisr]\nstartsecs = 1\n", 3, "supervisr"),
    ("unknown slot key", "[slots.BGRSCRPT_02]\nscirpt = 'x.py'\n", 2, "slots.BGRSCRPT_02.scirpt"),
    ("no such slot", "[slots.BGRSCRPT_07]\nscript = 'x.py'\n", 1, "slots.BGRSCRPT_07"),
    ("unknown access key", "[access]\nwrite_host = ['a']\n", 2, "access.write_host"),
    ("wrong type", '[supervisor]\nstartsecs = "fast"\n', 2, "supervisor.startsecs"),
    ("bool for a number", "[supervisor]\nstop_timeout = true\n", 2, "supervisor.stop_timeout"),
    (
        "float for an int",
        "[supervisor]\nstart_limit_burst = 2.5\n",
        2,
        "supervisor.start_limit_burst",
    ),
    (
        "wrong type in a slot",
        "[slots.BGRSCRPT_01]\n\nwatchdog = 'off'\n",
        3,
        "slots.BGRSCRPT_01.watchdog",
    ),
    ("table expected", "supervisor = 3\n", 1, "supervisor"),
    ("list expected", "[access]\nwrite_hosts = 'localhost'\n", 2, "access.write_hosts"),
    ("macros not a table", "[slots.BGRSCRPT_01]\nmacros = 'A=1'\n", 2, "slots.BGRSCRPT_01.macros"),
    ("bad enum", "[supervisor]\nautorestart = 'sometimes'\n", 2, "supervisor.autorestart"),
    ("out of range", "\n[supervisor]\nstart_limit_burst = 0\n", 3, "supervisor.start_limit_burst"),
    (
        "negative",
        "[supervisor]\n# the stop timeout\nstop_timeout = -1\n",
        3,
        "supervisor.stop_timeout",
    ),
    ("huge", "[supervisor]\nlog_backups = 1e9\n", 2, "supervisor.log_backups"),
    ("not finite", "[supervisor]\nwatchdog = nan\n", 2, "supervisor.watchdog"),
    (
        "out of range in a slot",
        "[slots.BGRSCRPT_02]\nstartsecs = 1e9\n",
        2,
        "slots.BGRSCRPT_02.startsecs",
    ),
    (
        "inconsistent",
        "[supervisor]\nbackoff_initial = 10\nbackoff_max = 5\n",
        3,
        "supervisor.backoff_max",
    ),
    ("dotted key", 'supervisor.startsecs = "x"\n', 1, "supervisor.startsecs"),
    (
        "inline table",
        "[slots]\nBGRSCRPT_01 = { startsecs = -2 }\n",
        2,
        "slots.BGRSCRPT_01.startsecs",
    ),
]


@pytest.mark.parametrize(
    "text, line, key", [case[1:] for case in BAD_SETTINGS], ids=[case[0] for case in BAD_SETTINGS]
)
def test_bad_settings_file_is_one_line_and_exit_2(tmp_path, config_dir, test_tag, text, line, key):
    settings = config_dir / "bgrscrpt.toml"
    settings.write_text(text)
    var_dir = tmp_path / "var"
    args = ["--prefix", "TBAD:", "--config-dir", str(config_dir), "--var-dir", str(var_dir)]
    message = one_line_error(run_cli(args, cwd=tmp_path))
    assert message.startswith(f"{settings}:{line}: "), message
    assert key in message, message
    assert not var_dir.exists()  # nothing was started, nothing touched


def test_settings_file_that_is_not_text(tmp_path, config_dir, test_tag):
    settings = tmp_path / "binary.toml"
    settings.write_bytes(b"\xff\xfe\x00[supervisor]\n")
    args = ["--config-dir", str(config_dir), "--config", str(settings), "--var-dir", "var"]
    message = one_line_error(run_cli(args, cwd=tmp_path))
    assert message.startswith(f"{settings}: "), message
    assert not (tmp_path / "var").exists()


# ---- options and environment --------------------------------------------------------


def bad_option_cases(tmp_path: Path, config_dir: Path) -> list[tuple]:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    missing = tmp_path / "missing"
    base = [
        "--prefix",
        "TBAD:",
        "--config-dir",
        str(config_dir),
        "--var-dir",
        str(tmp_path / "var"),
    ]
    return [
        # (id, args, env, words the line must contain)
        ("unknown option", [*base, "--bogus"], {}, ["--bogus"]),
        ("option without value", [*base, "--prefix"], {}, ["--prefix"]),
        ("slots not a number", [*base, "--slots", "x"], {}, ["--slots", "'x'"]),
        ("slots zero", [*base, "--slots", "0"], {}, ["--slots"]),
        ("slots too many", [*base, "--slots", "100"], {}, ["--slots"]),
        ("interface", [*base, "--interfaces", "banana"], {}, ["--interfaces", "banana"]),
        ("log level", [*base, "--log-level", "LOUD"], {}, ["--log-level", "LOUD"]),
        ("config missing", [*base, "--config", str(missing)], {}, ["--config", str(missing)]),
        ("config a directory", [*base, "--config", str(tmp_path)], {}, ["--config"]),
        ("config dir missing", [*base, "--config-dir", str(missing)], {}, [str(missing)]),
        (
            "config dir from the environment missing",
            ["--var-dir", str(tmp_path / "var")],
            {"ICPINSTSCRIPTROOT": str(missing)},
            ["ICPINSTSCRIPTROOT", str(missing)],
        ),
        ("var dir a file", [*base, "--var-dir", str(a_file)], {}, ["--var-dir", str(a_file)]),
        ("var dir under a file", [*base, "--var-dir", str(a_file / "v")], {}, ["--var-dir"]),
        ("CA port", base, {"EPICS_CA_SERVER_PORT": "70000"}, ["EPICS_CA_SERVER_PORT", "70000"]),
        ("CAS port", base, {"EPICS_CAS_SERVER_PORT": "banana"}, ["EPICS_CAS_SERVER_PORT"]),
    ]


BAD_OPTION_IDS = [
    "unknown option", "option without value", "slots not a number", "slots zero",
    "slots too many", "interface", "log level", "config missing", "config a directory",
    "config dir missing", "config dir from the environment missing", "var dir a file",
    "var dir under a file", "CA port", "CAS port",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_OPTION_IDS)
def test_bad_option_is_one_line_and_exit_2(tmp_path, config_dir, test_tag, case):
    cases = {c[0]: c[1:] for c in bad_option_cases(tmp_path, config_dir)}
    assert set(cases) == set(BAD_OPTION_IDS)
    args, env, words = cases[case]
    message = one_line_error(run_cli(args, cwd=tmp_path, env=env))
    for word in words:
        assert word in message, message
    assert not (tmp_path / "var").exists()


# ---- one var dir, one IOC -------------------------------------------------------------


def test_second_ioc_on_the_same_var_dir_refuses_and_the_first_is_unaffected(
    make_ioc, config_dir, tmp_path, port_pool
):
    write_script(config_dir, "background_script.py", QUIET_SCRIPT)
    first = make_ioc().start()
    first.wait_status("RUNNING")
    pid = first.get("BGRSCRPT_01:PID")
    lock = tmp_path / "var" / "bgrscrpt.lock"
    lock_text = lock.read_text()
    assert lock_text.strip() == str(first.proc.pid)

    second = make_ioc(prefix=f"{first.prefix}TWO:", port=port_pool.take(), settings=None)
    result = subprocess.run(
        second.command(),
        env=second.environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "is in use by another bgrscrpt_ioc" in lines[0], lines[0]
    assert str(tmp_path / "var") in lines[0] and f"pid {first.proc.pid}" in lines[0], lines[0]

    # The first still serves, its script runs on, untouched.
    assert first.proc.poll() is None
    assert first.get("BGRSCRPT_01:PID", use_monitor=False) == pid
    assert first.status() == "RUNNING"
    assert first.get("BGRSCRPT_01:START_CNT", use_monitor=False) == 1
    assert not process_gone(pid)
    beat = first.get("BGRSCRPT:HEARTBEAT", use_monitor=False)
    wait_for(lambda: first.get("BGRSCRPT:HEARTBEAT", use_monitor=False) > beat, 5, "HEARTBEAT")
    assert lock.read_text() == lock_text
    assert "Traceback" not in first.output()

    # Refused because it was in use: once the first has gone, the var dir is free.
    assert first.stop() == 0
    second.start()
    second.wait_status("RUNNING")
    assert second.get("BGRSCRPT_01:PID") != pid


# ---- --list-pvs ------------------------------------------------------------------------


def test_list_pvs_names_every_pv_the_ioc_serves(make_ioc, config_dir, tmp_path, prefix):
    ioc = make_ioc(slots=3).start()
    result = run_cli(
        ["--list-pvs", "--prefix", prefix, "--slots", "3", "--var-dir", str(tmp_path / "v")],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    names = result.stdout.split()
    assert len(names) == len(set(names))
    expected = {f"{prefix}BGRSCRPT:{pv}" for pv in IOC_PVS}
    expected |= {f"{prefix}BGRSCRPT_{n:02d}:{pv}" for n in (1, 2, 3) for pv in SLOT_PVS}
    assert expected <= set(names), sorted(expected - set(names))
    assert all(name.startswith(prefix) for name in names)
    assert not (tmp_path / "v").exists()

    # Every name answers, and the IOC serves no more than are listed.
    values = epics.caget_many(names, timeout=5.0, connection_timeout=5.0)
    silent = [name for name, value in zip(names, values, strict=True) if value is None]
    assert not silent
    serving = re.search(r"serving (\d+) PVs", ioc.output())
    assert serving and int(serving.group(1)) == len(names), ioc.output()
    assert epics.caget(f"{prefix}BGRSCRPT_04:START", timeout=0.5, connection_timeout=0.5) is None


def test_list_pvs_takes_the_prefix_from_mypvprefix(tmp_path, test_tag):
    result = run_cli(["--list-pvs"], cwd=tmp_path, env={"MYPVPREFIX": "IN:DEMO:"})
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    assert "IN:DEMO:BGRSCRPT_02:START" in names
    assert not any("BGRSCRPT_03" in name for name in names)  # two slots by default
    assert all(name.startswith("IN:DEMO:BGRSCRPT") for name in names)


# ---- the server port -------------------------------------------------------------------


def only_ca_client(port: int, pvname: str) -> subprocess.CompletedProcess:
    """caget through a fresh libca that knows only 127.0.0.1:PORT."""
    env = dict(os.environ, EPICS_CA_ADDR_LIST=f"127.0.0.1:{port}", EPICS_CA_AUTO_ADDR_LIST="NO")
    code = (
        "import epics, sys; v = epics.caget(sys.argv[1], timeout=5); print(v); sys.exit(v is None)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, pvname], env=env, capture_output=True, text=True, timeout=30
    )


def refuses_tcp(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


PORT_SCRIPT = """
import os, time
print("port", os.environ.get("EPICS_CA_SERVER_PORT"), flush=True)
while True:
    time.sleep(0.2)
"""


@pytest.mark.parametrize("with_ca_port", [True, False], ids=["CAS-wins-over-CA", "CAS-only"])
def test_epics_cas_server_port_is_honoured(make_ioc, config_dir, port_pool, with_ca_port):
    write_script(config_dir, "background_script.py", PORT_SCRIPT)
    cas_port = port_pool.take()
    decoy = _free_port()  # in nobody's address list: an IOC there would not be found
    ioc = make_ioc(port=cas_port, env={"EPICS_CAS_SERVER_PORT": str(cas_port)})
    if with_ca_port:
        ioc.extra_env["EPICS_CA_SERVER_PORT"] = str(decoy)
    else:
        ioc.environment = lambda: {  # type: ignore[method-assign]
            k: v for k, v in Ioc.environment(ioc).items() if k != "EPICS_CA_SERVER_PORT"
        }
        assert "EPICS_CA_SERVER_PORT" not in ioc.environment()
    ioc.start()
    client = only_ca_client(cas_port, ioc.pv("BGRSCRPT:VERSION"))
    assert client.returncode == 0, client.stdout + client.stderr
    assert refuses_tcp(decoy)
    # The script's CA settings point at the port the IOC really serves.
    wait_for(lambda: f"port {cas_port}" in (ioc.get("BGRSCRPT_01:LOG", as_string=True) or ""), 10)


# ---- a readable log ----------------------------------------------------------------------


def test_log_has_no_traceback_with_the_default_beacon_settings_or_no_repeater(
    make_ioc, tmp_path, prefix
):
    beacon_vars = ("EPICS_CAS_BEACON_ADDR_LIST", "EPICS_CAS_AUTO_BEACON_ADDR_LIST")
    default = make_ioc()
    default.environment = lambda: {  # type: ignore[method-assign]
        k: v for k, v in Ioc.environment(default).items() if k not in beacon_vars
    }
    # Beacons sent where no CA repeater listens are refused by the kernel.
    refused = make_ioc(
        prefix=f"{prefix}R:",
        var_dir=tmp_path / "var2",
        env={
            "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
            "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
            "EPICS_CAS_BEACON_PORT": str(_free_port()),
        },
    )
    default.start(wait=False)
    refused.start()
    default.wait_ready()
    for ioc in (default, refused):  # beacons go out at 0.02, 0.06, 0.14 … 5.1 s
        wait_for(lambda ioc=ioc: (ioc.get("BGRSCRPT:UPTIME") or 0) >= 5, 15, "5 s of uptime")
    for ioc in (default, refused):
        assert "Traceback" not in ioc.output(), ioc.output()

    def complaints(ioc) -> list[str]:
        """Lines about beacons other than the start-up line saying where they go."""
        lines = ioc.output().splitlines()
        return [line for line in lines if "beacon" in line.lower() and " INFO " not in line]

    assert not complaints(default), default.output()
    said = complaints(refused)
    assert len(said) == 1, refused.output()
    assert "127.0.0.1" in said[0] and "WARNING" in said[0], said


# ---- started the way procServ 2.7 starts it -----------------------------------------------

MASK_SCRIPT = """
import time
for line in open("/proc/self/status"):
    if line.startswith("SigBlk:"):
        print("blocked", line.split()[1], flush=True)
while True:
    time.sleep(0.2)
"""


def _block_like_procserv() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGPIPE, signal.SIGTERM})


def test_an_inherited_blocked_sigterm_is_cleared_for_the_ioc_and_its_scripts(make_ioc, config_dir):
    """procServ 2.7 starts its child with SIGHUP, SIGPIPE and SIGTERM blocked."""
    write_script(config_dir, "background_script.py", MASK_SCRIPT)
    ioc = make_ioc(preexec_fn=_block_like_procserv).start()
    ioc.wait_status("RUNNING")
    log = wait_for(
        lambda: re.search(r"blocked (\w+)", ioc.get("BGRSCRPT_01:LOG", as_string=True) or ""),
        10,
        "the script's signal mask in LOG",
    )
    assert int(log.group(1), 16) == 0
    pid = ioc.get("BGRSCRPT_01:PID")
    assert ioc.stop(timeout=20) == 0  # raises if SIGTERM did not end it
    assert process_gone(pid)


OWN_IOC_SCRIPT = """
import os, epics
name = os.environ["MYPVPREFIX"] + "BGRSCRPT:VERSION"
print("list", os.environ["EPICS_CA_ADDR_LIST"], flush=True)
print("own IOC answers", epics.caget(name, timeout=10) is not None, flush=True)
import time; time.sleep(600)
"""


def test_a_script_reaches_its_own_ioc_when_the_address_list_names_only_other_hosts(
    make_ioc, config_dir
):
    """An IOC configured to search elsewhere only (a list naming other machines, no
    broadcasts): its scripts still find it, as its own address goes first in theirs."""
    write_script(config_dir, "background_script.py", OWN_IOC_SCRIPT)
    elsewhere = {"EPICS_CA_ADDR_LIST": "192.0.2.1", "EPICS_CA_AUTO_ADDR_LIST": "NO"}
    ioc = make_ioc(env=elsewhere).start()
    ioc.wait_status("RUNNING")
    log = wait_for(
        lambda: re.search(
            r"own IOC answers (\w+)", ioc.get("BGRSCRPT_01:LOG", as_string=True) or ""
        ),
        20,
        "the script's caget of its own IOC",
    )
    text = ioc.get("BGRSCRPT_01:LOG", as_string=True)
    assert f"list 127.0.0.1:{ioc.port} 192.0.2.1" in text, text
    assert log.group(1) == "True", text
    assert ioc.stop() == 0
