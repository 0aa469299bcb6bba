"""The declared settings keys and the one check they go through.

The generic check on a dataclass of its own (types, ranges, labels, unknown
keys, defaults, required keys, relations); the line each refusal names, through
the real loader and real files; the one watchdog range; and docs/settings.md's
table of keys against the declarations.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bgrscrpt_ioc.ca.slot_pvs import SlotPVs
from bgrscrpt_ioc.core.setting_keys import (
    Bad,
    Checked,
    Choice,
    Flag,
    Needs,
    NotBelow,
    Range,
    Refused,
    check_table,
    check_values,
    declared,
    fill,
    keys_of,
    setting,
    with_defaults,
)
from bgrscrpt_ioc.core.slot import WATCHDOG, Policy, watchdog_seconds
from bgrscrpt_ioc.core.watch import WatchPolicy
from bgrscrpt_ioc.settings import (
    ACCESS_KEYS,
    IOC_KEYS,
    SLOT_KEYS,
    SUPERVISOR_KEYS,
    WATCH_KEYS,
    SettingsError,
    SlotSettings,
    WatchSettings,
    load_settings,
)


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Bad("must be a list of names")
    return tuple(value)


@dataclass(frozen=True)
class Sample:
    """A table of every kind of key."""

    label: str = field(metadata=declared(Checked(_names, "names"), note="required"))
    count: int = setting(5, Range(1, 10))
    period: float = setting(1.0, Range(0.5, 60.0, zero="off", unit="s"))
    mode: str = setting("a", Choice({"a": "A", "b": "B"}))
    way: str = setting("x", Choice({"x": "x", "y": "y", "z": "z"}, in_words=True))
    on: bool = setting(False, Flag(), relations=(Needs("names", "needs names"),))
    names: tuple[str, ...] | None = setting(None, Checked(_names, "names"))
    table: dict[str, int] = field(
        default_factory=dict, metadata=declared(Checked(dict, "a table"), {})
    )
    low: float = setting(1.0, Range(0.0, 100.0))
    high: float = setting(2.0, Range(0.0, 100.0), relations=(NotBelow("low"),))
    lag: float = setting(5.0, Range(1.0, 10.0, zero="off"), table="other")
    lag_hihi: float = setting(
        8.0, Range(1.0, 10.0, zero="off"), table="other", relations=(NotBelow("lag", True),)
    )
    not_a_key: int = 0


KEYS = keys_of(Sample)


def refusal(given: dict[str, Any], keys: dict[str, Any] = KEYS) -> tuple[str, str]:
    with pytest.raises(Refused) as caught:
        check_table(given, keys)
    return caught.value.key, caught.value.problem


# ---- the declarations --------------------------------------------------------------------


def test_the_keys_are_the_declared_fields_in_order_with_their_types_and_defaults():
    assert list(KEYS) == [
        "label", "count", "period", "mode", "way", "on", "names", "table", "low", "high",
    ]  # fmt: skip
    assert list(keys_of(Sample, "other")) == ["lag", "lag_hihi"]
    assert list(keys_of(Sample, None)) == [*KEYS, "lag", "lag_hihi"]
    assert (KEYS["count"].kind, KEYS["count"].default) == (int, 5)
    assert (KEYS["period"].kind, KEYS["period"].default) == (float, 1.0)
    assert KEYS["label"].required and not KEYS["names"].required
    assert Sample(label="x") == Sample(label="x", count=5, period=1.0, mode="a")


def test_a_mutable_default_needs_a_factory():
    with pytest.raises(TypeError, match="default_factory"):
        setting([], Checked(_names, "names"))


# ---- types and ranges ----------------------------------------------------------------


@pytest.mark.parametrize("value", [1.5, 5.0, True, "5", None, [5], math.nan])
def test_an_int_key_takes_integers_only(value):
    assert refusal({"label": [], "count": value}) == ("count", "must be an integer")


@pytest.mark.parametrize("value", [True, "1", None, [1.0], {}])
def test_a_float_key_takes_numbers_only(value):
    assert refusal({"label": [], "period": value}) == ("period", "must be a number")


@pytest.mark.parametrize(
    ("value", "taken"), [(0.5, 0.5), (60, 60.0), (7, 7.0), (0, 0.0), (-0.0, 0.0)]
)
def test_a_float_key_takes_its_range_and_zero_as_floats(value, taken):
    values = check_table({"label": [], "period": value}, KEYS)
    assert values["period"] == taken and type(values["period"]) is float


@pytest.mark.parametrize("value", [0.49, 60.01, -1, math.nan, math.inf, -math.inf, 1e300])
def test_out_of_range_names_the_range_its_unit_and_zero(value):
    assert refusal({"label": [], "period": value}) == (
        "period",
        "must be 0 or between 0.5 and 60 s",
    )


@pytest.mark.parametrize("key", ["count", "period"])
def test_an_integer_beyond_any_float_is_out_of_range(tmp_path, key):
    name, problem = refusal({"label": [], key: 10**400})
    assert name == key and "between" in problem
    path = tmp_path / "bgrscrpt.toml"
    path.write_text(f"[supervisor]\nstart_limit_burst = {10**400}\n")
    with pytest.raises(SettingsError, match="start_limit_burst: must be between 1 and 1000$"):
        load_settings(path, config_dir=tmp_path, slot_count=1)


@pytest.mark.parametrize(("value", "ok"), [(1, True), (10, True), (0, False), (11, False)])
def test_an_int_range_is_inclusive_without_zero(value, ok):
    if ok:
        assert check_table({"label": [], "count": value}, KEYS)["count"] == value
    else:
        assert refusal({"label": [], "count": value}) == ("count", "must be between 1 and 10")


def test_labels_map_to_values_and_a_refusal_lists_them():
    assert check_table({"label": [], "mode": "b"}, KEYS)["mode"] == "B"
    for bad in ("c", "B", "", 1, ["a"], None):
        assert refusal({"label": [], "mode": bad}) == ("mode", "must be one of ['a', 'b']")
    assert refusal({"label": [], "way": "w"}) == ("way", 'must be "x", "y" or "z"')


@pytest.mark.parametrize("value", [1, 0, "true", None, []])
def test_a_flag_is_true_or_false(value):
    assert refusal({"label": [], "on": value}) == ("on", "must be true or false")


def test_a_checker_returns_the_value_as_used_or_says_what_it_must_be():
    assert check_table({"label": ["a", "b"]}, KEYS)["label"] == ("a", "b")
    assert refusal({"label": [1]}) == ("label", "must be a list of names")


# ---- unknown keys, defaults, required keys ------------------------------------------------


def test_an_unknown_key_lists_the_known_ones():
    key, problem = refusal({"label": [], "cuont": 3})
    assert key == "cuont"
    assert problem == f"unknown key (expected one of {sorted(KEYS)})"
    # a key of another table is unknown here
    assert refusal({"label": [], "lag": 3})[0] == "lag"


def test_the_first_problem_in_the_given_order_is_the_one_named():
    assert refusal({"label": [], "count": 0, "bogus": 1})[0] == "count"
    assert refusal({"label": [], "bogus": 1, "count": 0})[0] == "bogus"


def test_absent_keys_take_their_defaults_and_only_given_keys_are_checked():
    assert check_values({"count": 7}, KEYS) == {"count": 7}
    values = check_table({"label": []}, KEYS)
    assert values == {
        "label": (), "count": 5, "period": 1.0, "mode": "a", "way": "x", "on": False,
        "names": None, "table": {}, "low": 1.0, "high": 2.0,
    }  # fmt: skip
    assert fill(Sample, values) == Sample(label=())


def test_a_table_default_is_never_shared():
    first = with_defaults({"label": ()}, KEYS)
    first["table"]["x"] = 1
    assert with_defaults({"label": ()}, KEYS)["table"] == {}
    assert KEYS["table"].default == {}


def test_a_required_key_that_is_absent_is_refused_in_its_checks_words():
    assert refusal({"count": 3}) == ("label", "must be a list of names")


# ---- relations ----------------------------------------------------------------------------


def test_not_below_names_the_key_the_settings_give():
    assert refusal({"label": [], "high": 0.5}) == ("high", "must not be less than low")
    assert refusal({"label": [], "low": 3.0}) == ("low", "must not be more than high")
    assert refusal({"label": [], "low": 3.0, "high": 2.5}) == ("high", "must not be less than low")
    assert check_table({"label": [], "low": 3.0, "high": 3.0}, KEYS)["high"] == 3.0


def test_not_below_unless_off_lets_either_be_zero():
    other = keys_of(Sample, "other")
    assert check_table({"lag": 9.0, "lag_hihi": 0}, other)["lag_hihi"] == 0.0
    assert check_table({"lag": 0, "lag_hihi": 2.0}, other)["lag"] == 0.0
    with pytest.raises(Refused, match="lag_hihi: must not be less than lag"):
        check_table({"lag": 9.0, "lag_hihi": 2.0}, other)


def test_needs_refuses_a_flag_without_its_partner():
    assert refusal({"label": [], "on": True}) == ("on", "needs names")
    assert check_table({"label": [], "on": True, "names": []}, KEYS)["on"] is True


# ---- the IOC's tables --------------------------------------------------------------------


def test_every_key_fills_a_field_of_the_same_name():
    for keys, classes in [
        (SLOT_KEYS, (Policy, SlotSettings)),
        (WATCH_KEYS, (WatchPolicy, WatchSettings)),
    ]:
        fields_ = set().union(*(cls.__dataclass_fields__ for cls in classes))
        assert set(keys) <= fields_
    assert set(SLOT_KEYS) - set(SUPERVISOR_KEYS) == {"script", "macros"}
    assert set(ACCESS_KEYS) == {"write_hosts", "write_users", "require_address"}
    assert set(IOC_KEYS) == {"loop_lag_high", "loop_lag_hihi"}


def test_the_loader_gives_the_declared_defaults(tmp_path):
    settings = load_settings(None, config_dir=tmp_path, slot_count=1)
    assert settings.slots[0].policy == Policy()
    slot = settings.slots[0]
    for name, key in SUPERVISOR_KEYS.items():
        owner = slot.policy if name in Policy.__dataclass_fields__ else slot
        assert getattr(owner, name) == key.default, name
    for name, key in {**ACCESS_KEYS, **IOC_KEYS}.items():
        assert getattr(settings, name) == key.default, name


def test_one_watchdog_range_for_the_file_the_runner_and_the_pv(tmp_path):
    assert SUPERVISOR_KEYS["watchdog"].allowed is WATCHDOG
    assert SlotPVs.watchdog.pvspec.cls_kwargs["upper_ctrl_limit"] == WATCHDOG.high
    path = tmp_path / "bgrscrpt.toml"
    for value in (0, -0.0, 0.5, WATCHDOG.low, 30, WATCHDOG.high, WATCHDOG.high + 0.5, -1):
        path.write_text(f"[supervisor]\nwatchdog = {value!r}\n")
        try:
            in_file = load_settings(path, config_dir=tmp_path, slot_count=1).slots[0].watchdog
        except SettingsError:
            in_file = None
        try:
            put = watchdog_seconds(value)
        except ValueError:
            put = None
        assert in_file == put, value


# ---- lines --------------------------------------------------------------------------------

GOOD_WATCH = '[[watch]]\nname = "{}"\npvs = ["A"]\nrestart = ["X"]\nvia = "pv"\n'

LINES = [
    # (what, file, the start of the message after the path)
    ("in its table", "[ioc]\n\nloop_lag_high = -1\n", "3: ioc.loop_lag_high: "),
    ("a comment mentions it first", "# startsecs = 1\n[supervisor]\nstartsecs = -1\n",
     "3: supervisor.startsecs: "),
    ("quoted key", "[supervisor]\n'startsecs' = -1\n", "2: supervisor.startsecs: "),
    ("dotted key at the top", "x = 1\nsupervisor.startsecs = -1\n", "1: x: "),
    ("dotted key", "\nsupervisor.startsecs = -1\n", "2: supervisor.startsecs: "),
    ("inline table in a parent",
     "[slots]\nBGRSCRPT_01 = {}\nBGRSCRPT_02 = { startsecs = -1 }\n",
     "3: slots.BGRSCRPT_02.startsecs: "),
    ("the key is a table", "[supervisor]\n[access.write_hosts]\n", "2: access.write_hosts: "),
    ("an unknown table", "\n[bogus]\n", "2: bogus: unknown key"),
    ("same key in two tables", "[ioc]\nloop_lag_high = 1\n[access]\nrequire_address = 1\n",
     "4: access.require_address: "),
    ("relation in a slot", "[supervisor]\nbackoff_max = 10\n[slots.BGRSCRPT_02]\n"
     "backoff_initial = 20\n", "4: slots.BGRSCRPT_02.backoff_initial: must not be more than"),
    ("relation in [supervisor]", "[supervisor]\nbackoff_initial = 100\n[slots.BGRSCRPT_02]\n"
     "startsecs = 2\n", "2: supervisor.backoff_initial: must not be more than backoff_max"),
    ("relation, the other key absent", "[ioc]\nloop_lag_high = 5000\n",
     "2: ioc.loop_lag_high: must not be more than loop_lag_hihi"),
    ("second watch", GOOD_WATCH.format("A") + GOOD_WATCH.format("B") + "delay = -1\n",
     "11: watch.B.delay: "),
    ("first watch, key also in the second",
     GOOD_WATCH.format("A") + "delay = -1\n" + GOOD_WATCH.format("B") + "delay = 1\n",
     "6: watch.A.delay: "),
    ("a watch's absent key: its header",
     GOOD_WATCH.format("A") + "\n" + GOOD_WATCH.format("B").replace('pvs = ["A"]\n', ""),
     "7: watch.B.pvs: "),
    ("a watch's sub-table", GOOD_WATCH.format("A").replace('via = "pv"\n', "")
     + "[watch.procserv]\nX = 'bad'\n", "5: watch.A.procserv: X: 'bad': "),
    ("a watch's dotted key", GOOD_WATCH.format("A").replace('via = "pv"\n', "")
     + "procserv.X = 'bad'\n", "5: watch.A.procserv: "),
    ("a watch without a name", GOOD_WATCH.format("A") + GOOD_WATCH.format("B:1"),
     "7: watch[1].name: "),
    ("watches as an inline array", 'x = 1\nwatch = [{ name = "A", pvs = [] }]\n', "1: x: "),
    ("inline array of watches", '\nwatch = [{ name = "A", pvs = [] }]\n', "2: watch.A.pvs: "),
    ("two watches, one name", GOOD_WATCH.format("A") + "\n" + GOOD_WATCH.format("A"),
     "8: watch.A.name: two watches"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "start"), [c[1:] for c in LINES], ids=[c[0] for c in LINES])
def test_a_refusal_names_the_line_of_its_key(tmp_path, text, start):
    path = tmp_path / "bgrscrpt.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as caught:
        load_settings(path, config_dir=tmp_path, slot_count=2)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{start}"), message


# ---- the reference in docs/settings.md ----------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def reference(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import settings_reference

    yield settings_reference
    sys.modules.pop("settings_reference", None)


def test_the_docs_list_every_key_with_its_default_and_range(reference):
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert reference.rewritten(text) == text, (
        "docs/settings.md's table of keys differs from the declarations: "
        "run .venv/bin/python tools/settings_reference.py"
    )
    for title, keys in reference.TABLES:
        block = text.split(f"\n{title}:\n\n", 1)[1].split("\n\n", 1)[0]
        rows = {line.split(" | ")[0].strip("| `"): line for line in block.splitlines()[2:]}
        assert set(rows) == set(keys), title
        for name, key in keys.items():
            cells = [cell.strip() for cell in rows[name].strip("|").split(" | ")]
            assert cells[1] == key.default_text().replace("|", "\\|"), name
            assert cells[2].startswith(key.allowed.describe(key.kind)), name
    assert "0 (off), or 1 to 86400 s" in text  # the watchdog, as WATCHDOG says


def test_the_reference_tool_rewrites_a_stale_table(reference):
    text = f"intro\n{reference.BEGIN}\n| `startsecs` | 7 |\n{reference.END}\noutro\n"
    new = reference.rewritten(text)
    assert new.startswith("intro\n") and new.endswith("\noutro\n")
    assert "| `startsecs` | 1.0 | 0 to 3600 s |" in new and "| 7 |" not in new


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('[supervisor]\n"a\\nb" = 1\n', "supervisor.a\\nb: unknown key"),
        ('[slots]\n"BGRSCRPT_\\r01" = {}\n', "slots.BGRSCRPT_\\r01: no such slot"),
        ('"\\u001b[2J" = 1\n', "\\x1b[2J: unknown key"),
        ('[[watch]]\nname = "Z"\npvs = ["A"]\nrestart = ["X"]\nprocserv = { "a\\nb" = "h:1" }\n',
         "watch.Z.procserv: a\\nb is not in restart"),
        ('[[watch]]\nname = "Z"\npvs = ["A"]\nrestart = ["X"]\nprocserv = { "\\u0085" = 1 }\n',
         'watch.Z.procserv: \\x85 must be "host:port"'),
    ],
)  # fmt: skip
def test_a_key_from_the_file_is_escaped_in_the_one_line(tmp_path, text, shown):
    path = tmp_path / "bgrscrpt.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as caught:
        load_settings(path, config_dir=tmp_path, slot_count=2)
    message = str(caught.value)
    assert message.isprintable(), message
    assert shown in message, message


@pytest.mark.parametrize(("last", "fits"), [(33, True), (34, False)])
def test_the_watch_names_fill_names_to_its_last_character(tmp_path, last, fits):
    # 199 names of 40 characters and their spaces: 8159; then a space and the last name.
    names = [f"W{i:039d}" for i in range(199)] + ["L" * last]
    text = "".join(GOOD_WATCH.format(name) for name in names)
    path = tmp_path / "bgrscrpt.toml"
    path.write_text(text)
    if fits:
        settings = load_settings(path, config_dir=tmp_path, slot_count=1)
        assert len(" ".join(w.name for w in settings.watches)) == 8192
    else:
        with pytest.raises(SettingsError, match=rf":997: watch.{'L' * last}.name: .* 8192 "):
            load_settings(path, config_dir=tmp_path, slot_count=1)
