"""Validation is total: every key, every hostile value, is rejected in one line or runs.

For each key of the settings file, a table of hostile values (wrong types, TOML
dates, NaN and infinities, tiny and huge numbers, NUL and control characters,
empty strings, bad hosts and ports). Each must either be rejected with one line
naming the file, the line and the key, or load into settings that everything
the IOC builds from them accepts (``runs``): the cores, the script's
environment, the endpoint, the access rule, the PVs. The values the bug report
names must be rejected.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

from bgrscrpt_ioc.ca.access import WriteRule
from bgrscrpt_ioc.ca.ioc_pvs import IocPVs
from bgrscrpt_ioc.core.endpoint import parse_endpoint
from bgrscrpt_ioc.core.slot import Slot
from bgrscrpt_ioc.core.watch import WatchCore
from bgrscrpt_ioc.settings import Settings, SettingsError, load_settings
from bgrscrpt_ioc.supervisor.env import script_environment
from bgrscrpt_ioc.supervisor.runner import watchdog_seconds
from bgrscrpt_ioc.supervisor.script_check import look

NUMBERS = [
    "nan", "inf", "-inf", "-0.0", "0", "1e-300", "0.05", "1e300", "-1", "2.5", "1",
    "9223372036854775807", "true", '"1"', "[]", "{}", "1979-05-27T07:32:00Z", "1979-05-27",
    "07:32:00",
]  # fmt: skip
STRINGS = [
    '""', '" "', '"\\u0000"', '"a\\u0000b.py"', '"a\\nb.py"', '"\\u001b[31mred"', '"\\u007f"',
    '"é ☃ 𝄞.py"', f'"{"x" * 5000}"', "1", "true", "[]", "{}", "1979-05-27T07:32:00Z",
]  # fmt: skip
HOST_LISTS = [
    '["localhost"]', '["127.0.0.1"]', '["::1"]', '["ndxemu"]', '["999.999.999.999"]',
    '["-bad"]', '["a..b"]', '[""]', '[" "]', '["host name"]', '["h\\u0000"]', '[1]', '"x"',
    '["a_b"]', f'["{"a" * 64}"]', '["10.0.0.0/8"]', '["10.0.0.0/33"]', '["::/0"]',
    '["1.2.3.4/abc"]', '["host/24"]', '["10.1.2.3/24"]',
]  # fmt: skip
USER_LISTS = ['["spudulike"]', '["a b"]', '[""]', '["\\u0000"]', '["\\t"]', "[1]", '"x"', "[[]]"]
MACROS = [
    "{ WHEN = 1979-05-27T07:32:00Z }", "{ D = 1979-05-27 }", "{ T = 07:32:00 }",
    "{ A = [1, 2] }", "{ A = { B = 1 } }", "{ A = nan }", "{ A = inf }", '{ A = "x\\u0000" }',
    '{ "" = "x" }', '{ "a\\nb" = "x" }', '{ A = "é ☃" }', "{ A = 99999999999999999999 }",
    "{ A = true, B = 1.5, C = -3 }", f'{{ A = "{"x" * 70000}" }}', '"A=1"', "[]",
]  # fmt: skip
ENDPOINTS = [
    '"999.999.999.999:40001"', '"127.0.0.1:0"', '"127.0.0.1:65536"', '"127.0.0.1:-1"',
    '"127.0.0.1:+5"', '"127.0.0.1:"', '":20001"', '"127.0.0.1"', '"localhost:20001"',
    '"ndxemu.isis.cclrc.ac.uk:20001"', '"-bad:20001"', '"a_b:20001"', '"1.2.3:20001"',
    '"01.2.3.4:20001"', '"[::1]:20001"', '"[zz]:20001"', '"unix:/run/ps.sock"', '"unix:rel"',
    '"unix:/a\\u0000b"', f'"unix:/{"x" * 200}"', '"127.0.0.1:２０００１"', "20001", "[]",
]  # fmt: skip
PV_LISTS = [
    '["A:B"]', "[]", '[""]', '["a b"]', '["a\\u0000b"]', '["é"]', f'["{"A" * 201}"]', "[1]",
    '"A:B"',
]  # fmt: skip
VALUE_LISTS = [
    '["ON"]', "[1, 2.5]", "[nan]", "[inf]", '["x\\u0000"]', f'["{"x" * 41}"]', '[1, "A"]',
    "[true]", "[[1]]",
]  # fmt: skip
NAMES = ['"ZF"', '""', '"a:b"', '"a b"', f'"{"A" * 41}"', "1", '"é"']
IOC_LISTS = ['["ZFCNTRL_01"]', "[]", '["A", "A"]', '["a:b"]', '[""]', "[1]"]

SLOT_KEYS = {
    "startsecs": NUMBERS, "stop_timeout": NUMBERS, "backoff_initial": NUMBERS,
    "backoff_max": NUMBERS, "start_limit_burst": NUMBERS, "start_limit_interval": NUMBERS,
    "watchdog": NUMBERS, "log_max_bytes": NUMBERS, "log_backups": NUMBERS,
    "autorestart": ['"Off"', '"On failure"', '"Always"', '"always"', '""', "1", "true"],
}  # fmt: skip
WATCH_KEYS = {
    "delay": NUMBERS, "verify_timeout": NUMBERS, "max_restarts": NUMBERS, "window": NUMBERS,
    "backoff": NUMBERS, "backoff_max": NUMBERS, "name": NAMES, "pvs": PV_LISTS,
    "values": VALUE_LISTS, "restart": IOC_LISTS,
    "severity": ['"MINOR"', '"minor"', '"NO_ALARM"', '""', "3"],
    "disconnected": ["true", '"yes"', "1"], "via": ['"pv"', '"ssh"', '""', "1"],
}  # fmt: skip


def cases() -> list[tuple[str, str, str, str]]:
    """(id, settings text, the key the error must name, the line of the hostile value)."""
    out = []
    for key, values in SLOT_KEYS.items():
        for value in values:
            out.append((f"supervisor.{key}={value[:30]}", f"[supervisor]\n{key} = {value}\n",
                        f"supervisor.{key}", "2"))  # fmt: skip
            out.append((f"slot.{key}={value[:30]}", f"[slots.BGRSCRPT_02]\n{key} = {value}\n",
                        f"slots.BGRSCRPT_02.{key}", "2"))  # fmt: skip
    for value in STRINGS:
        out.append((f"script={value[:30]}", f"[slots.BGRSCRPT_01]\nscript = {value}\n",
                    "slots.BGRSCRPT_01.script", "2"))  # fmt: skip
    for value in MACROS:
        out.append((f"macros={value[:30]}", f"[slots.BGRSCRPT_01]\nmacros = {value}\n",
                    "slots.BGRSCRPT_01.macros", "2"))  # fmt: skip
    for value in HOST_LISTS:
        out.append((f"write_hosts={value[:30]}", f"[access]\nwrite_hosts = {value}\n",
                    "access.write_hosts", "2"))  # fmt: skip
    for value in ("true", "false", '"yes"', "1", "[]", "nan"):
        out.append((f"require_address={value}",
                    f'[access]\nrequire_address = {value}\nwrite_hosts = ["10.0.0.0/8"]\n',
                    "access.require_address", "2"))  # fmt: skip
    out.append(("require_address without write_hosts", "[access]\nrequire_address = true\n",
                "access.require_address", "2"))  # fmt: skip
    for value in USER_LISTS:
        out.append((f"write_users={value[:30]}", f"[access]\nwrite_users = {value}\n",
                    "access.write_users", "2"))  # fmt: skip
    for key in ("loop_lag_high", "loop_lag_hihi"):
        for value in NUMBERS:
            out.append((f"ioc.{key}={value[:30]}", f"[ioc]\n{key} = {value}\n", f"ioc.{key}",
                        "2"))  # fmt: skip
    watch = 'name = "ZF"\npvs = ["A:B"]\nrestart = ["ZFCNTRL_01"]\nvia = "pv"\n'
    for key, values in WATCH_KEYS.items():
        for value in values:
            body = re.sub(rf"^{key} = .*\n", "", watch, flags=re.M)
            label = "watch[0]" if key == "name" else "watch.ZF"
            out.append((f"watch.{key}={value[:30]}", f"[[watch]]\n{body}{key} = {value}\n",
                        f"{label}.{key}", str(body.count("\n") + 2)))  # fmt: skip
    for value in ENDPOINTS:
        body = watch.replace('via = "pv"\n', "")
        out.append((f"procserv={value[:30]}",
                    f"[[watch]]\n{body}procserv = {{ ZFCNTRL_01 = {value} }}\n",
                    "watch.ZF.procserv", "5"))  # fmt: skip
    return out


CASES = cases()


def runs(settings: Settings, config_dir: Path) -> None:
    """Build what the IOC builds from ``settings``; any exception fails the test."""
    for slot in settings.slots:
        core = Slot(slot.name, slot.policy, autorestart=slot.autorestart, watchdog=slot.watchdog)
        policy = slot.policy
        for name in ("startsecs", "stop_timeout", "backoff_initial", "backoff_max"):
            assert math.isfinite(getattr(policy, name)) and getattr(policy, name) >= 0, name
        assert policy.start_limit_burst >= 1
        assert watchdog_seconds(slot.watchdog) == slot.watchdog
        core.start(0.0)
        core.spawned(1, 0.0)
        core.tick(1e6)  # every deadline, however late
        env = script_environment(
            os.environ, slot=slot.name, config_dir=config_dir, var_dir=config_dir,
            kit_root=config_dir, notify_socket="@x", prefix="P:", macros=slot.macros,
        )  # fmt: skip
        for key, value in env.items():
            assert "\0" not in key and "\0" not in value, key
            assert len(value.encode("utf-8", "surrogateescape")) < 128 * 1024, key
        if slot.macros is not None:
            assert json.loads(env["MACROS"]) == slot.macros
        look(slot.script)  # stat: a NUL in the path would raise ValueError here
        assert len(os.fsencode(str(slot.script))) <= 1023
        assert slot.log_max_bytes >= 1024 and 0 <= slot.log_backups <= 1000
    for watch in settings.watches:
        watch_core = WatchCore(watch.policy, watch.pvs, 0.0)
        watch_core.tick(1e6)
        for pv in watch.pvs:
            pv.encode("ascii")
        for endpoint in watch.procserv.values():
            parse_endpoint(endpoint)
        for watch_value in watch.values:
            assert not isinstance(watch_value, float) or math.isfinite(watch_value)
    WriteRule(
        settings.write_hosts, settings.write_users, require_address=settings.require_address
    ).allows("localhost", "x", address="10.1.2.3")
    IocPVs("P:BGRSCRPT:", lag_high=settings.loop_lag_high, lag_hihi=settings.loop_lag_hihi)


@pytest.mark.parametrize(("text", "key", "line"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_hostile_value_is_rejected_in_one_line_or_runs(tmp_path, text, key, line):
    path = tmp_path / "bgrscrpt.toml"
    path.write_text(text, encoding="utf-8")
    try:
        settings = load_settings(path, config_dir=tmp_path, slot_count=2)
    except SettingsError as exc:
        message = str(exc)
        assert "\n" not in message, message
        if "not valid TOML" not in message:
            assert message.startswith(f"{path}:{line}: {key}: "), message
        return
    runs(settings, tmp_path)


REJECTED = [
    # what the bug report and the brief name, and their neighbours
    ("[slots.BGRSCRPT_01]\nmacros = { WHEN = 1979-05-27T07:32:00Z }\n", "date-time"),
    ('[slots.BGRSCRPT_01]\nscript = "a\\u0000b.py"\n', "control characters"),
    ("[supervisor]\nwatchdog = 1e-300\n", "must be 0 or between 1 and 86400 s"),
    ("[supervisor]\nwatchdog = 0.5\n", "must be 0 or between 1 and 86400 s"),
    ('[[watch]]\nname = "Z"\npvs = ["A"]\nrestart = ["X"]\n'
     'procserv = { X = "999.999.999.999:40001" }\n', "not an IPv4 address"),
    ('[[watch]]\nname = "Z"\npvs = ["A"]\nrestart = ["X"]\n'
     'procserv = { X = "127.0.0.1:0" }\n', "not a port"),
    ('[[watch]]\nname = "Z"\npvs = ["A"]\nrestart = ["X"]\n'
     'procserv = { X = "-bad:20001" }\n', "not a host name"),
    ("[slots.BGRSCRPT_01]\nmacros = { A = [1] }\n", "an array"),
    ("[supervisor]\nstart_limit_interval = 1e-300\n", "between 1 and 86400 s"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "problem"), REJECTED)
def test_the_reported_values_are_rejected(tmp_path, text, problem):
    path = tmp_path / "bgrscrpt.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        load_settings(path, config_dir=tmp_path, slot_count=2)
    assert problem in str(caught.value), caught.value
    assert str(caught.value).startswith(f"{path}:")


ACCEPTED = [
    ("[supervisor]\nwatchdog = 0\n", lambda s: s.slots[0].watchdog == 0.0),
    ("[supervisor]\nwatchdog = 1\n", lambda s: s.slots[0].watchdog == 1.0),
    ("[supervisor]\nstop_timeout = 0\n", lambda s: s.slots[0].policy.stop_timeout == 0.0),
    ('[slots.BGRSCRPT_01]\nmacros = { A = "é ☃", N = 3, X = 1.5, ON = true }\n',
     lambda s: s.slots[0].macros == {"A": "é ☃", "N": 3, "X": 1.5, "ON": True}),
    ('[[watch]]\nname = "Z"\npvs = ["A"]\nrestart = ["X"]\n'
     'procserv = { X = "[::1]:20001" }\n', lambda s: s.watches[0].procserv["X"] == "[::1]:20001"),
    ('[[watch]]\nname = "Z"\npvs = ["A"]\nrestart = ["X"]\n'
     'procserv = { X = "ndxemu.isis.cclrc.ac.uk:20001" }\n', lambda s: len(s.watches) == 1),
    ("[ioc]\nloop_lag_high = 50\nloop_lag_hihi = 0\n",
     lambda s: (s.loop_lag_high, s.loop_lag_hihi) == (50.0, 0.0)),
]  # fmt: skip


@pytest.mark.parametrize(("text", "check"), ACCEPTED)
def test_meaningful_values_are_accepted_and_run(tmp_path, text, check):
    path = tmp_path / "bgrscrpt.toml"
    path.write_text(text, encoding="utf-8")
    settings = load_settings(path, config_dir=tmp_path, slot_count=2)
    assert check(settings)
    runs(settings, tmp_path)
