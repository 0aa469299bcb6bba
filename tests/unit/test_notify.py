"""The notify channel: parse_notify, NotifyListener, and bgrscrpt_ioc.script sending to it."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct

import pytest

from bgrscrpt_ioc import script
from bgrscrpt_ioc.supervisor.notify import NotifyListener, parse_notify

TIMEOUT = 5.0


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        (b"READY=1\nSTATUS=text", {"READY": "1", "STATUS": "text"}),
        (b"WATCHDOG=1", {"WATCHDOG": "1"}),
        (b"STATUS=a=b c\n", {"STATUS": "a=b c"}),
        (b"STATUS=\n", {"STATUS": ""}),
        (b"garbage\n=1\n1X=2\nBAD KEY=3\nOK=4", {"OK": "4"}),
        (b"STATUS=one\nSTATUS=two", {"STATUS": "two"}),
        (b"STATUS=caf\xc3\xa9 \xff", {"STATUS": "café \ufffd"}),
        (b"", {}),
    ],
)
def test_parse_notify(data, fields):
    assert parse_notify(data) == fields


class Inbox:
    """A listener and the messages it delivered."""

    def __init__(self, name: str = "BGRSCRPT_01") -> None:
        self.messages: list[dict[str, str]] = []
        self._arrived = asyncio.Event()
        self.listener = NotifyListener(name, self._on_message)

    def _on_message(self, fields: dict[str, str]) -> None:
        self.messages.append(fields)
        self._arrived.set()

    async def wait_count(self, n: int) -> list[dict[str, str]]:
        async def until() -> None:
            while len(self.messages) < n:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(until(), TIMEOUT)
        return self.messages


@pytest.fixture
async def inbox(monkeypatch):
    box = Inbox()
    box.listener.open(asyncio.get_running_loop())
    monkeypatch.setenv("NOTIFY_SOCKET", box.listener.address)
    yield box
    box.listener.close()


def test_address_is_abstract_random_and_named():
    a = NotifyListener("BGRSCRPT_01", lambda fields: None)
    b = NotifyListener("BGRSCRPT_01", lambda fields: None)
    assert a.address.startswith("@bgrscrpt/") and a.address.endswith("/BGRSCRPT_01")
    assert a.address != b.address


async def test_script_notify_reaches_listener(inbox):
    assert script.notify(READY=1, STATUS="multi\nline")
    assert await inbox.wait_count(1) == [{"READY": "1", "STATUS": "multi line"}]


async def test_register_beat_status(inbox):
    assert script.register()
    assert script.beat()
    assert script.status("first line\nsecond line")
    assert await inbox.wait_count(3) == [
        {"READY": "1"},
        {"WATCHDOG": "1"},
        {"STATUS": "first line second line"},
    ]


async def test_pending_datagrams_are_all_delivered(inbox):
    # Ten is the kernel's default queue length for a datagram socket.
    for i in range(10):
        assert script.status(f"n{i}")
    messages = await inbox.wait_count(10)
    assert [m["STATUS"] for m in messages] == [f"n{i}" for i in range(10)]


async def test_failing_callback_does_not_stop_the_listener(monkeypatch, caplog):
    calls: list[dict[str, str]] = []
    second = asyncio.Event()

    def on_message(fields: dict[str, str]) -> None:
        calls.append(fields)
        if len(calls) == 1:
            raise RuntimeError("bug downstream")
        second.set()

    listener = NotifyListener("BGRSCRPT_02", on_message)
    listener.open(asyncio.get_running_loop())
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    try:
        with caplog.at_level(logging.ERROR):
            assert script.notify(STATUS="one")
            assert script.notify(STATUS="two")
            await asyncio.wait_for(second.wait(), TIMEOUT)
        assert [c["STATUS"] for c in calls] == ["one", "two"]
        assert "bug downstream" in caplog.text
    finally:
        listener.close()


def test_notify_without_socket_returns_false(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert script.notify(READY=1) is False
    assert script.register() is False
    assert script.beat() is False
    assert script.status("x") is False


async def test_notify_to_closed_listener_returns_false(monkeypatch):
    listener = NotifyListener("BGRSCRPT_03", lambda fields: None)
    listener.open(asyncio.get_running_loop())
    listener.close()
    listener.close()  # idempotent
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    assert script.notify(READY=1) is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/dir/socket")
    assert script.beat() is False


async def test_empty_notify_sends_nothing(inbox):
    assert script.notify() is False


def test_datagrams_from_other_users_are_dropped():
    def creds(uid: int) -> list[tuple[int, int, bytes]]:
        return [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("3i", 1, uid, 0))]

    accept = NotifyListener._from_our_user
    assert accept(creds(os.getuid()))
    assert accept(creds(0))
    assert not accept(creds(os.getuid() + 54321))
    assert accept([])  # no credentials attached: nothing to check against
