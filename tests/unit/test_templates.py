"""The EPICS database templates describe exactly what the IOC serves.

The templates in db_templates/ are read by tools (archiver, alarm and autosave
configuration, IBEX's database server); the IOC serves its records from
caproto PVGroups. These tests hold one to the other, record by record and
field by field, and check that a real EPICS base IOC loads the templates.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from caproto import AccessRights, ChannelType

from bgrscrpt_ioc.ca.channels import READONLY_ASG, is_read_only
from bgrscrpt_ioc.ca.pvdb import build_pvdb, pv_names
from bgrscrpt_ioc.ca.slot_pvs import SlotView
from bgrscrpt_ioc.ca.watch_pvs import WatchView, build_watch_pvs
from devsupport.dbparse import DbSyntaxError, Record, parse, parse_file
from devsupport.epics_base import base_ioc_environment

ROOT = Path(__file__).resolve().parents[2]
SLOT_DB = ROOT / "db_templates" / "bgrscrpt.db"
IOC_DB = ROOT / "db_templates" / "bgrscrpt_ioc.db"
WATCH_DB = ROOT / "db_templates" / "bgrscrpt_watch.db"
WATCHES_DB = ROOT / "db_templates" / "bgrscrpt_watches.db"
PREFIX = "TMPL:"
SLOTS = ["BGRSCRPT_01", "BGRSCRPT_02"]
WATCHES = ["ZFMAGFLD", "TEMP_1"]

CA_TYPE = {
    "bo": ChannelType.ENUM,
    "bi": ChannelType.ENUM,
    "mbbo": ChannelType.ENUM,
    "mbbi": ChannelType.ENUM,
    "longin": ChannelType.LONG,
    "ao": ChannelType.DOUBLE,
    "ai": ChannelType.DOUBLE,
    "stringin": ChannelType.STRING,
}
WAVEFORM_CA_TYPE = {"CHAR": ChannelType.CHAR}
STATE_FIELDS = (
    "ZRST", "ONST", "TWST", "THST", "FRST", "FVST", "SXST", "SVST",
    "EIST", "NIST", "TEST", "ELST", "TVST", "TTST", "FTST", "FFST",
)  # fmt: skip


class _Controller:
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def restart(self) -> None: ...
    def set_autorestart(self, mode: int) -> None: ...
    def set_watchdog(self, seconds: float) -> None: ...


class _WatchController:
    def set_enabled(self, enabled: bool) -> None: ...
    def restart_now(self) -> None: ...
    def set_dry_run(self, dry_run: bool) -> None: ...


def template_records(prefix: str = PREFIX) -> dict[str, Record]:
    records = parse_file(str(IOC_DB), {"P": prefix})
    for slot in SLOTS:
        records += parse_file(str(SLOT_DB), {"P": prefix, "SLOT": slot})
    records += parse_file(str(WATCHES_DB), {"P": prefix})
    for watch in WATCHES:
        records += parse_file(str(WATCH_DB), {"P": prefix, "WATCH": watch})
    by_name = {record.name: record for record in records}
    assert len(by_name) == len(records), "a record name appears twice"
    return by_name


@pytest.fixture(scope="module")
def templates() -> dict[str, Record]:
    return template_records()


@pytest.fixture
def ioc():
    watch = _WatchController()
    watches = build_watch_pvs(PREFIX, [(name, watch, WatchView()) for name in WATCHES], watch)
    pvdb, _, _ = build_pvdb(PREFIX, [(slot, _Controller(), SlotView()) for slot in SLOTS], watches)
    return pvdb


def enum_strings(record: Record) -> list[str]:
    if record.type in ("bi", "bo"):
        return [record.fields.get("ZNAM", ""), record.fields.get("ONAM", "")]
    strings = [record.fields.get(name, "") for name in STATE_FIELDS]
    while strings and not strings[-1]:
        strings.pop()
    return strings


# ---- the parser ------------------------------------------------------------------


def test_parser_reads_records_fields_infos_and_macros():
    text = """
    # a comment with $(UNDEFINED) in it
    record(bo, "$(P)X:$(S=DEF)") {
        field(DESC, "say \\"hi\\"")   # trailing comment
        field(PREC, 3)
        info(autosaveFields, "VAL")
        alias("$(P)Y")
    }
    record(ai, "${P}Z")
    """
    records = parse(text, {"P": "A:"})
    assert [(r.type, r.name) for r in records] == [("bo", "A:X:DEF"), ("ai", "A:Z")]
    assert records[0].fields == {"DESC": 'say "hi"', "PREC": "3"}
    assert records[0].infos == {"autosaveFields": "VAL"}
    assert records[0].aliases == ["A:Y"]


def test_parser_rejects_an_undefined_macro_and_bad_syntax():
    with pytest.raises(DbSyntaxError, match="P"):
        parse('record(bo, "$(P)X")')
    with pytest.raises(DbSyntaxError):
        parse('record(bo, "X") { field(DESC "no comma") }')


# ---- the IOC serves what the templates say -----------------------------------------


def test_same_record_names(templates, ioc):
    assert set(ioc) == set(templates)
    assert set(pv_names(PREFIX, SLOTS, WATCHES)) == set(templates)


def test_without_watches_only_the_ioc_wide_watch_pvs(templates):
    # bgrscrpt_watches.db is served always; bgrscrpt_watch.db once per watch.
    ioc_wide = {record.name for record in parse_file(str(WATCHES_DB), {"P": PREFIX})}
    assert ioc_wide == {f"{PREFIX}BGRSCRPT:WATCH:DRYRUN", f"{PREFIX}BGRSCRPT:WATCH:NAMES"}
    names = set(pv_names(PREFIX, SLOTS))
    assert {name for name in names if ":WATCH:" in name} == ioc_wide
    assert names == {name for name in templates if ":WATCH:" not in name} | ioc_wide


def test_same_record_types(templates, ioc):
    assert {name: ioc[name].record_type for name in ioc} == {
        name: record.type for name, record in templates.items()
    }


def test_same_channel_access_types(templates, ioc):
    for name, record in templates.items():
        if record.type == "waveform":
            expected = WAVEFORM_CA_TYPE[record.fields["FTVL"]]
        else:
            expected = CA_TYPE[record.type]
        assert ioc[name].data_type == expected, name


def test_same_enum_strings_in_order(templates, ioc):
    for name, record in templates.items():
        if CA_TYPE.get(record.type) == ChannelType.ENUM:
            assert list(ioc[name].enum_strings) == enum_strings(record), name


def test_same_waveform_lengths(templates, ioc):
    for name, record in templates.items():
        if record.type == "waveform":
            assert ioc[name].max_length == int(record.fields["NELM"]), name


def _same(template_value: str, ioc_value: object) -> bool:
    if isinstance(ioc_value, bool | int | float):
        return float(template_value) == float(ioc_value)
    return template_value == str(ioc_value)


async def test_every_template_field_reads_the_same_on_the_ioc(templates, ioc):
    for name, record in templates.items():
        for field, expected in record.fields.items():
            channel = ioc[name].fields[field]
            await channel.read(channel.data_type)  # runs caproto's field getters
            assert _same(expected, channel.value), (
                f"{name}.{field}: {channel.value!r} != {expected!r}"
            )


async def test_fields_the_templates_leave_out_are_empty_on_the_ioc(templates, ioc):
    # e.g. no EGU on the IOC that the template forgot, no stray ASG.
    for name, record in templates.items():
        for field in ("EGU", "ASG"):
            if field in record.fields or field not in ioc[name].fields:
                continue
            channel = ioc[name].fields[field]
            await channel.read(channel.data_type)
            assert channel.value == "", f"{name}.{field} is {channel.value!r} on the IOC"


def test_read_only_exactly_where_the_template_says(templates, ioc):
    for name, record in templates.items():
        read_only = record.fields.get("ASG") == READONLY_ASG
        assert is_read_only(ioc[name]) == read_only, name
        writable = AccessRights.WRITE in ioc[name].check_access("localhost", "someone")
        assert writable == (not read_only), name


def test_autosave_exactly_the_settings(templates, ioc):
    # The settings are the writable records that are not commands (bo).
    settings = {n for n, r in templates.items() if not is_read_only(ioc[n]) and r.type != "bo"}
    autosaved = {n for n, r in templates.items() if r.infos.get("autosaveFields") == "VAL"}
    assert autosaved == settings
    assert {n.rsplit(":", 1)[1] for n in settings} == {"AUTORESTART", "WATCHDOG"}


def test_archive_tags_in_ibex_form(templates, ioc):
    # IBEX reads info(archive) as "[period] FIELD...": every word a number or a field.
    for name, record in templates.items():
        tag = record.infos.get("archive")
        if tag is None:
            continue
        for word in tag.split():
            if re.fullmatch(r"[0-9.]+", word):
                continue
            assert word == "VAL" or word in ioc[name].fields, f"{name}: archive {word!r}"


def test_descriptions_fit_epics(templates):
    for name, record in templates.items():
        assert 0 < len(record.fields.get("DESC", "")) <= 40, name


# ---- a real EPICS base IOC loads them ------------------------------------------------


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_epics_base_loads_the_templates_as_written():
    pytest.importorskip("epicscorelibs")
    prefix = "BASE:"
    templates = template_records(prefix)
    ca_port, pva_port = _free_port(), _free_port()
    env = {
        **base_ioc_environment(os.environ, ca_port, pva_port),
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
    }
    wanted = [(name, field) for name, record in templates.items() for field in record.fields]
    commands = ['ioc("dbl")'] + [f'ioc("dbgf {name}.{field}")' for name, field in wanted]
    args = [sys.executable, "-m", "epicscorelibs.ioc", "-m", f"P={prefix}", "-d", str(IOC_DB)]
    for slot in SLOTS:
        args += ["-m", f"P={prefix},SLOT={slot}", "-d", str(SLOT_DB)]
    args += ["-m", f"P={prefix}", "-d", str(WATCHES_DB)]
    for watch in WATCHES:
        args += ["-m", f"P={prefix},WATCH={watch}", "-d", str(WATCH_DB)]
    # The IOC shell is a Python console; "exit()" ends it (it ignores SIGTERM).
    proc = subprocess.Popen(
        args,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate("\n".join([*commands, "exit()", ""]), timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert not re.search(r"error|can't|illegal|unknown", out + err, re.IGNORECASE), out + err

    # The console's ">>> " prompts share stdout with the IOC's output.
    lines = [re.sub(r"^(>>> |\.\.\. )+", "", line) for line in out.splitlines()]
    names = [line for line in lines if line.startswith(prefix)]
    assert set(names) == set(templates)
    # dbgf prints "DBF_TYPE:   value" (strings quoted), one line per field asked for.
    values = [line.split(":", 1)[1].strip() for line in lines if line.startswith("DBF_")]
    assert len(values) == len(wanted)
    for (name, field), shown in zip(wanted, values, strict=True):
        # Strings come quoted, integers as "1 = 0x1".
        expected, got = templates[name].fields[field], shown.strip('"')
        got = re.sub(r"^(-?\d+) = 0x[0-9a-fA-F]+$", r"\1", got)
        assert got == expected or _same_number(got, expected), (
            f"EPICS reads {name}.{field} as {shown!r}, the template says {expected!r}"
        )
