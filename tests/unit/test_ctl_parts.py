"""The CLI's pure parts: following a sliding LOG window, slot names, which watches
status shows, colour choice."""

from __future__ import annotations

import io
import queue

import pytest

from bgrscrpt_ioc.ctl.ca import Reading
from bgrscrpt_ioc.ctl.commands import (
    IocRow,
    Link,
    follow_log,
    needs_attention,
    slot_name,
    watches_to_show,
)
from bgrscrpt_ioc.ctl.logtail import log_lines, new_lines, window_moved
from bgrscrpt_ioc.ctl.style import Style, use_colour


def window(first: int, last: int) -> list[str]:
    return [f"line {n}" for n in range(first, last + 1)]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (window(1, 20), window(2, 21), window(21, 21)),  # moved on by one
        (window(1, 20), window(6, 25), window(21, 25)),  # by five
        (window(1, 20), window(1, 20), []),  # nothing new
        (window(1, 3), window(1, 5), window(4, 5)),  # still filling up
        (window(1, 20), window(30, 49), window(30, 49)),  # more than a window arrived
        ([], window(1, 3), window(1, 3)),  # the first update
        (window(1, 20), [], []),  # cleared
    ],
)
def test_new_lines(old, new, expected):
    assert new_lines(old, new) == expected


def test_followed_windows_read_as_one_stream():
    stream, shown = [], []
    for end in (3, 3, 7, 20, 21, 40, 41, 80):
        text = "\n".join(window(max(1, end - 19), end)) + "\n"
        lines = log_lines(text)
        stream += new_lines(shown, lines)
        shown = lines
    numbers = [int(line.split()[1]) for line in stream]
    assert numbers == sorted(set(numbers)) and numbers[-1] == 80


class _Following:
    """The CLI's CA client as follow_log uses it: updates (None: disconnected) queued."""

    def __init__(self, updates: list[str | None]):
        self.updates: queue.Queue[str | None] = queue.Queue()
        for update in updates:
            self.updates.put(update)

    def follow(self, suffix: str) -> queue.Queue[str | None]:
        return self.updates


def test_following_across_a_lost_connection_says_lost_once_then_back():
    def text(first: int, last: int) -> str:
        return "\n".join(window(first, last)) + "\n"

    updates = [text(1, 3), None, None, text(1, 6), text(2, 7)]
    client = _Following(updates)
    events = follow_log(client, "BGRSCRPT_01", text(1, 2))  # type: ignore[arg-type]
    got = [next(events) for _ in range(7)]  # all there is: one more would wait for ever
    assert got == [
        "line 3",
        Link.LOST,  # the second None says nothing new
        Link.BACK,
        "line 4",
        "line 5",
        "line 6",
        "line 7",
    ]


def test_an_outage_longer_than_log_holds_is_marked_where_lines_are_missing():
    def text(first: int, last: int) -> str:
        return "\n".join(window(first, last)) + "\n"

    updates = [text(1, 20), None, text(31, 50), text(32, 51), ""]
    events = follow_log(_Following(updates), "BGRSCRPT_01", text(1, 20))  # type: ignore[arg-type]
    got = [next(events) for _ in range(24)]
    assert got[:3] == [Link.LOST, Link.BACK, Link.GAP]  # lines 21..30 never arrived
    assert got[3:] == [f"line {n}" for n in range(31, 52)]
    # A window that continues the last one, or is cleared, or starts empty: no gap.
    assert window_moved(window(1, 20), window(5, 24)) == (window(21, 24), False)
    assert window_moved(window(1, 20), []) == ([], False)
    assert window_moved([], window(1, 3)) == (window(1, 3), False)


@pytest.mark.parametrize(
    ("text", "name"),
    [("1", "BGRSCRPT_01"), ("01", "BGRSCRPT_01"), ("12", "BGRSCRPT_12"),
     ("BGRSCRPT_03", "BGRSCRPT_03"), ("bgrscrpt_3", "BGRSCRPT_03"), (" 2 ", "BGRSCRPT_02")],
)  # fmt: skip
def test_slot_names(text, name):
    assert slot_name(text) == name


@pytest.mark.parametrize("text", ["0", "00", "100", "abc", "BGRSCRPT_", "BGRSCRPT_1x", "-1", ""])
def test_bad_slot_names(text):
    with pytest.raises(ValueError, match="not a slot"):
        slot_name(text)


@pytest.mark.parametrize(
    ("served", "named", "only", "shown"),
    [
        # The IOC's NAMES, in its order; --watch/--config names added after them, once.
        (["ZF", "TEMP"], [], None, ["ZF", "TEMP"]),
        (["ZF", "TEMP"], ["TEMP", "EXTRA"], None, ["ZF", "TEMP", "EXTRA"]),
        ([], [], None, []),
        # Names given as arguments filter; only slots asked for: no watches.
        (["ZF", "TEMP"], [], ["TEMP"], ["TEMP"]),
        (["ZF", "TEMP"], [], ["NOPE", "ZF"], ["ZF", "NOPE"]),
        (["ZF", "TEMP"], [], [], []),
        # An IOC without NAMES: only the watches named, as before NAMES existed.
        (None, ["ZF"], None, ["ZF"]),
        (None, [], None, []),
        (None, ["ZF"], ["TEMP"], ["TEMP"]),
    ],
)
def test_watches_status_shows(served, named, only, shown):
    assert watches_to_show(served, named, only) == shown


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_where_wanted(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_colour(FakeTty(), "auto")
    assert not use_colour(io.StringIO(), "auto")
    assert use_colour(io.StringIO(), "always")
    assert not use_colour(FakeTty(), "never")
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(FakeTty(), "auto")
    assert Style(True).state("FATAL", 8) == "\033[31mFATAL   \033[0m"
    assert Style(False).state("FATAL", 8) == "FATAL   "


@pytest.mark.parametrize(
    ("loop_lag", "attention"),
    [
        (None, False),  # an older IOC, which does not measure it
        (Reading(3.0, 0), False),
        (Reading(250.0, 1), True),  # MINOR: at or above loop_lag_high
        (Reading(1500.0, 2), True),
    ],
)
def test_status_needs_attention_when_the_ioc_loop_lag_is_in_alarm(loop_lag, attention):
    ioc = IocRow("1.0", 10, "", loop_lag)
    assert needs_attention([], [], ioc) is attention
    assert needs_attention([], []) is False  # no IOC row: slots and watches alone
