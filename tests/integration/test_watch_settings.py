"""Bad ``[[watch]]`` entries stop the real IOC before it starts: one line, exit 2,
with the file, the line and the key. ``--list-pvs`` lists the watch PVs (DRYRUN and
NAMES even with no watch)."""

from __future__ import annotations

import pytest

from tests.integration.test_cli import one_line_error, run_cli

GOOD = """\
[[watch]]
name = "ZF"
pvs = ["IN:EMU:ZFCNTRL_01:FIELD:MAGNITUDE"]
restart = ["ZFCNTRL_01"]
procserv = { ZFCNTRL_01 = "127.0.0.1:20001" }
"""

WATCH_PVS = ("STATE", "ALARM", "ENABLE", "RESTART", "RESTART_CNT", "LAST_RESTART", "MSG")

BAD_WATCHES = [
    # (what, file text, line, key named in the message, words in the problem)
    ("unknown key", GOOD + "dealy = 3\n", 6, "watch.ZF.dealy", "unknown key"),
    ("wrong type", GOOD + 'delay = "soon"\n', 6, "watch.ZF.delay", "must be a number"),
    ("bool for a number", GOOD + "max_restarts = true\n", 6, "watch.ZF.max_restarts", "integer"),
    ("negative", GOOD + "backoff = -1\n", 6, "watch.ZF.backoff", "between"),
    ("severity", GOOD + 'severity = "BAD"\n', 6, "watch.ZF.severity", "INVALID"),
    ("disconnected", GOOD + 'disconnected = "yes"\n', 6, "watch.ZF.disconnected", "true or"),
    ("values mixed", GOOD + 'values = ["A", 1]\n', 6, "watch.ZF.values", "list of"),
    ("via", GOOD + 'via = "ssh"\n', 6, "watch.ZF.via", '"procserv", "pv" or "peer"'),
    ("peer not a table", GOOD + 'via = "peer"\npeer = "IN:B:"\n', 7, "watch.ZF.peer",
     "must be a table"),
    ("no remote watch", GOOD + 'via = "peer"\n', 1, "watch.ZF.peer",
     "no remote watch for ZFCNTRL_01"),
    ("peer an IOC prefix", GOOD + 'via = "peer"\npeer = { ZFCNTRL_01 = "IN:B:" }\n', 7,
     "watch.ZF.peer", "not a remote watch's PV prefix"),
    ("peer for another IOC", GOOD + 'peer = { X = "IN:B:BGRSCRPT:WATCH:ZF:" }\n', 6,
     "watch.ZF.peer", "X is not in restart"),
    ("peer names a watch twice", GOOD.replace('restart = ["ZFCNTRL_01"]',
     'restart = ["ZFCNTRL_01", "ZFMAGFLD_01"]').replace("procserv = {",
     'procserv = { ZFMAGFLD_01 = "127.0.0.1:2", ') + 'peer = { ZFCNTRL_01 = '
     '"IN:B:BGRSCRPT:WATCH:ZF:", ZFMAGFLD_01 = "IN:B:BGRSCRPT:WATCH:ZF:" }\n', 6,
     "watch.ZF.peer", "name the same remote watch"),
    ("not PV-safe", GOOD.replace('"ZF"', '"ZF:1"'), 2, "watch[0].name", "PV names"),
    ("no name", GOOD.replace('name = "ZF"\n', ""), 1, "watch[0].name", "letters"),
    ("no pvs", GOOD.replace('pvs = ["IN:EMU:ZFCNTRL_01:FIELD:MAGNITUDE"]\n', ""), 1,
     "watch.ZF.pvs", "non-empty"),
    ("empty pvs", GOOD.replace('["IN:EMU:ZFCNTRL_01:FIELD:MAGNITUDE"]', "[]"), 3,
     "watch.ZF.pvs", "non-empty"),
    ("a PV name no search carries", GOOD.replace("ZFCNTRL_01:FIELD", "Z" * 60), 3,
     "watch.ZF.pvs", "at most 59 can be searched for"),
    ("no restart", GOOD.replace('restart = ["ZFCNTRL_01"]\n', ""), 1, "watch.ZF.restart",
     "IOC names"),
    ("no procServ endpoint", GOOD.replace('procserv = { ZFCNTRL_01 = "127.0.0.1:20001" }\n', ""),
     1, "watch.ZF.procserv", "no procServ endpoint for ZFCNTRL_01"),
    ("endpoint for another IOC", GOOD.replace('restart = ["ZFCNTRL_01"]',
     'restart = ["ZFCNTRL_01", "ZFMAGFLD_01"]'), 5, "watch.ZF.procserv",
     "no procServ endpoint for ZFMAGFLD_01"),
    ("bad endpoint", GOOD.replace("127.0.0.1:20001", "somewhere"), 5, "watch.ZF.procserv",
     "host:port"),
    ("bad port", GOOD.replace("127.0.0.1:20001", "127.0.0.1:70000"), 5, "watch.ZF.procserv",
     "not a port"),
    ("two watches, one name", GOOD + "\n" + GOOD, 8, "watch.ZF.name", "two watches"),
    ("backoff_max below backoff", GOOD + "backoff = 60\nbackoff_max = 10\n", 7,
     "watch.ZF.backoff_max", "backoff"),
    ("not an array of tables", 'watch = "ZF"\n', 1, "watch", "[[watch]]"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "key", "problem"),
    [case[1:] for case in BAD_WATCHES],
    ids=[case[0] for case in BAD_WATCHES],
)
def test_bad_watch_settings_exit_2_with_file_line_and_key(tmp_path, text, line, key, problem):
    config = tmp_path / "bgrscrpt.toml"
    config.write_text(text)
    result = run_cli(
        ["--config-dir", str(tmp_path), "--var-dir", str(tmp_path / "var")], cwd=tmp_path
    )
    message = one_line_error(result)
    assert message.startswith(f"{config}:{line}: {key}: "), message
    assert problem in message, message
    assert not (tmp_path / "var").exists()  # nothing started


def test_peer_backend_needs_no_procserv_table(tmp_path):
    text = GOOD.replace(
        'procserv = { ZFCNTRL_01 = "127.0.0.1:20001" }\n',
        'via = "peer"\npeer = { ZFCNTRL_01 = "IN:NDXEMU:BGRSCRPT:WATCH:ZF:" }\n',
    )
    (tmp_path / "bgrscrpt.toml").write_text(text)
    result = run_cli(["--config-dir", str(tmp_path), "--list-pvs", "--prefix", "P:"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "P:BGRSCRPT:WATCH:ZF:STATE" in result.stdout.split()


def test_pv_backend_needs_no_procserv_table(tmp_path):
    text = GOOD.replace('procserv = { ZFCNTRL_01 = "127.0.0.1:20001" }\n', 'via = "pv"\n')
    (tmp_path / "bgrscrpt.toml").write_text(text)
    result = run_cli(["--config-dir", str(tmp_path), "--list-pvs", "--prefix", "P:"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "P:BGRSCRPT:WATCH:ZF:STATE" in result.stdout.split()


def test_list_pvs_names_the_watch_pvs(tmp_path):
    (tmp_path / "bgrscrpt.toml").write_text(GOOD + "\n" + GOOD.replace('"ZF"', '"ZF2"'))
    result = run_cli(
        ["--config-dir", str(tmp_path), "--list-pvs", "--prefix", "IN:X:", "--slots", "1"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    expected = {"IN:X:BGRSCRPT:WATCH:DRYRUN", "IN:X:BGRSCRPT:WATCH:NAMES"} | {
        f"IN:X:BGRSCRPT:WATCH:{watch}:{pv}" for watch in ("ZF", "ZF2") for pv in WATCH_PVS
    }
    assert expected <= set(names)
    assert len(names) == len(set(names))
    # without watches only the IOC-wide ones, served always
    bare = run_cli(["--list-pvs", "--prefix", "IN:X:"], cwd=tmp_path / "..")
    assert {n for n in bare.stdout.split() if ":WATCH:" in n} == {
        "IN:X:BGRSCRPT:WATCH:DRYRUN",
        "IN:X:BGRSCRPT:WATCH:NAMES",
    }


def test_more_watch_names_than_names_holds(tmp_path):
    # 41 characters a name with its space: the 200th no longer fits NAMES (8192).
    names = [f"W{i:039d}" for i in range(200)]
    text = "\n".join(GOOD.replace('"ZF"', f'"{name}"') for name in names)
    (tmp_path / "bgrscrpt.toml").write_text(text)
    result = run_cli(["--config-dir", str(tmp_path), "--list-pvs"], cwd=tmp_path)
    message = one_line_error(result)
    assert f"watch.{names[199]}.name" in message and "NAMES" in message, message


def test_list_pvs_refuses_bad_watch_settings(tmp_path):
    (tmp_path / "bgrscrpt.toml").write_text(GOOD + "delay = []\n")
    result = run_cli(["--config-dir", str(tmp_path), "--list-pvs"], cwd=tmp_path)
    assert "watch.ZF.delay" in one_line_error(result)
