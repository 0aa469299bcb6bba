"""Parsing procServ's control-port output, line by line, in 2.7 and 2.8+ wordings.

The 2.7.0 transcripts are what Debian's procServ 2.7.0 sends; the 2.8 lines are
the wordings of procServ 2.8's source (clientFactory.cc, processClass.cc).
"""

from __future__ import annotations

import pytest

from bgrscrpt_ioc.recovery.procserv_protocol import (
    MAX_LINE,
    ChildExited,
    ChildRunning,
    ChildShutDown,
    Greeting,
    GreetingDone,
    LineReader,
    LineTooLong,
    Mode,
    NewChild,
    ShuttingDown,
    kill_enabled,
    parse_line,
)

IAC_NEGOTIATION = b"\xff\xfb\x01\xff\xfd\x22"  # IAC WILL ECHO, IAC DO LINEMODE

GREETING_27 = (
    b"@@@ Welcome to procServ (procServ Process Server 2.7.0)\r\n"
    b"@@@ Use ^X to kill the child, auto restart is ON, use ^T to toggle auto restart\r\n"
    b"@@@ procServ server PID: 24507\r\n"
    b"@@@ Server startup directory: /tmp/psx\r\n"
    b"@@@ Child startup directory: /tmp/psx\r\n"
    b'@@@ Child "SIMX" started as: /usr/bin/python3\r\n'
    b'@@@ Child "SIMX" PID: 24509\r\n'
    b"@@@ procServ server started at: Thu Nov 26 02:46:56 2026\r\n"
    b'@@@ Child "SIMX" started at: Thu Nov 26 02:46:56 2026\r\n'
    b"@@@ 0 user(s) and 0 logger(s) connected (plus you)\r\n" + IAC_NEGOTIATION
)

KILL_AND_RESTART_OFF_27 = (
    b"\r\n@@@ Toggled auto restart to OFF\r\n"
    b"\r\n@@@ @@@ @@@ @@@ @@@\r\n"
    b"@@@ Received a sigChild for process 24565. The process was killed by signal 9\r\n"
    b"@@@ Current time: Thu Nov 26 02:47:08 2026\r\n"
    b"@@@ Child process is shutting down, auto restart is disabled\r\n"
    b"@@@ ^R or ^X restarts the child, ^Q quits the server\r\n"
    b'@@@ Restarting child "SIMX"\r\n'
    b"@@@    (as /usr/bin/python3)\r\n"
    b'@@@ The PID of new child "SIMX" is: 24620\r\n'
    b"@@@ @@@ @@@ @@@ @@@\r\n"
    b"IOC Starting w/ [('/tmp/psx/t.db', '')] \r\n"
    b">>> "
)


def events(data: bytes, chunk: int = 0) -> list:
    reader = LineReader()
    pieces = [data] if not chunk else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    out = []
    for piece in pieces:
        for line in reader.feed(piece):
            event = parse_line(line)
            if event is not None:
                out.append(event)
    return out


@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_greeting_27(chunk):
    assert events(GREETING_27, chunk) == [
        Greeting("2.7.0"),
        Mode("ON", toggled=False),
        ChildRunning(24509),
        GreetingDone(),
    ]


@pytest.mark.parametrize("chunk", [0, 1, 5])
def test_kill_and_restart_27(chunk):
    assert events(KILL_AND_RESTART_OFF_27, chunk) == [
        Mode("OFF", toggled=True),
        ChildExited(24565),
        ShuttingDown(autorestart=False),
        NewChild(24620),
    ]


def test_greeting_without_a_child():
    data = (
        b"@@@ Use ^X to kill the child, auto restart is OFF, use ^T to toggle auto restart\r\n"
        b'@@@ Child "SIMX" is SHUT DOWN\r\n'
        b"@@@ 0 user(s) and 0 logger(s) connected (plus you)\r\n"
        b"@@@ ^R or ^X restarts the child, ^Q quits the server\r\n"
    )
    assert events(data) == [Mode("OFF", toggled=False), ChildShutDown(), GreetingDone()]


@pytest.mark.parametrize(
    ("line", "event"),
    [
        # 2.8+: "mode" in both sentences, and a third mode
        (
            "@@@ Use ^X to kill the child, auto restart mode is ON, use ^T to toggle auto restart",
            Mode("ON", toggled=False),
        ),
        (
            "@@@ Use ^X to kill the child, auto restart mode is ONESHOT, "
            "use ^T to toggle auto restart",
            Mode("ONESHOT", toggled=False),
        ),
        ("@@@ Toggled auto restart mode to OFF", Mode("OFF", toggled=True)),
        ("@@@ Toggled auto restart mode to ONESHOT", Mode("ONESHOT", toggled=True)),
        # 2.7
        ("@@@ Toggled auto restart to ON", Mode("ON", toggled=True)),
        (
            "@@@ Child process is shutting down, a new one will be restarted shortly",
            ShuttingDown(autorestart=True),
        ),
        ("@@@ Child process is shutting down, auto restart is disabled", ShuttingDown(False)),
        ("@@@ Child process is shutting down, oneshot mode: server will exit", ShuttingDown(False)),
        (
            "@@@ Use ^X to kill the child, auto restart is ON, auto restart toggle disabled",
            Mode("ON", toggled=False, can_toggle=False),
        ),
        # an @@@ line glued to a prompt the child printed without a newline
        (
            ">>> @@@ Received a sigChild for process 77. The process was killed by signal 9",
            ChildExited(77),
        ),
        ('@@@ The PID of new child "ZF CNTRL" is: 4242', NewChild(4242)),
    ],
)
def test_each_line_on_its_own(line, event):
    assert parse_line(line) == event


@pytest.mark.parametrize(
    "line",
    [
        "",
        "IOC Running",
        "auto restart is OFF",  # no @@@: child output, not procServ
        "@@@ Current time: Thu Nov 26 02:47:08 2026",
        "@@@ ^R or ^X restarts the child, ^Q quits the server",
        "@@@ @@@ @@@ @@@ @@@",
        "@@@ Toggled auto restart to MAYBE",
        "@@@ The PID of new child is: x",
        "garbage \x00\x01 @@@",
    ],
)
def test_other_lines_are_no_events(line):
    assert parse_line(line) is None


def test_kill_enabled():
    assert kill_enabled("@@@ Use ^X to kill the child, auto restart is ON, use ^T to …") is True
    assert kill_enabled("@@@ Kill command disabled, auto restart is ON, …") is False
    assert kill_enabled("@@@ procServ server PID: 1") is None


def test_line_reader_drops_telnet_commands_and_keeps_partial_lines():
    reader = LineReader()
    assert reader.feed(b"ab\xff\xfb\x01c\r") == []
    assert reader.feed(b"\nd\xff\xff") == ["abc"]  # IAC IAC is a 0xFF data byte
    assert reader.partial == "d\ufffd"
    # a subnegotiation, IAC SB ... IAC SE, is dropped whole
    assert reader.feed(b"\xff\xfa\x18\x01xterm\xff\xf0e\n") == ["d\ufffde"]


def test_line_reader_bounds_a_line_without_a_newline():
    reader = LineReader(max_line=1000)
    assert reader.feed(b"x" * 1000) == []
    with pytest.raises(LineTooLong, match="more than 1000 bytes"):
        reader.feed(b"x")
    # through the telnet path too (an IAC in the data)
    reader = LineReader(max_line=1000)
    with pytest.raises(LineTooLong):
        reader.feed(b"\xff\xfb\x01" + b"y" * 1001)
    # long lines that do end are fine, however many
    reader = LineReader(max_line=1000)
    assert reader.feed((b"z" * 999 + b"\r\n") * 50) == ["z" * 999] * 50
    assert LineReader().max_line == MAX_LINE == 64 * 1024


@pytest.mark.parametrize("seed", range(20))
def test_line_reader_fast_path_reads_as_the_byte_by_byte_one(seed):
    """Chunks without IAC take the fast path; the lines are the same as one byte at a time."""
    import random

    rng = random.Random(seed)
    alphabet = [b"a", b"\r", b"\n", b"\xc3\xa9", b"@@@ x", b"\xff\xfb\x01", b"\xff\xff", b" "]
    data = b"".join(rng.choice(alphabet) for _ in range(400))
    whole, chunked = LineReader(), LineReader()
    one_by_one = [line for i in range(len(data)) for line in whole.feed(data[i : i + 1])]
    cuts = sorted(rng.sample(range(1, len(data)), 20))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert [line for piece in pieces for line in chunked.feed(piece)] == one_by_one
    assert chunked.partial == whole.partial
