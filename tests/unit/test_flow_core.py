"""Pure parts of the CA server's flow control and input bounds: coalescing, the slow-client
bound, CA message framing, the log rate limit, and what the server takes from its environment."""

from __future__ import annotations

import struct

import pytest

from bgrscrpt_ioc.ca.limits import (
    DEFAULT_SLOW_CLIENT_MAX_BYTES,
    DEFAULT_SLOW_CLIENT_TMO,
    ServerSetupError,
    caproto_version_problem,
    server_limits,
)
from bgrscrpt_ioc.core.ca_frames import FrameGuard, max_message_bytes
from bgrscrpt_ioc.core.flow import Coalescer, SlowClientBound
from bgrscrpt_ioc.core.ratelimit import OncePerInterval

# ---- Coalescer --------------------------------------------------------------------


def test_coalescer_keeps_the_latest_per_key_in_first_come_order():
    c: Coalescer[str, int] = Coalescer()
    c.offer("a", 1, 10)
    c.offer("b", 1, 20)
    c.offer("a", 2, 30)  # replaces a's update, keeps a's place
    c.offer("c", 1, 5)
    assert c.waiting_bytes == 55
    assert c.replaced == 1
    assert c.take() == [("a", 2, 30), ("b", 1, 20), ("c", 1, 5)]
    assert not c and c.waiting_bytes == 0


def test_coalescer_put_back_goes_first_and_newer_content_wins():
    c: Coalescer[str, int] = Coalescer()
    for key in "abc":
        c.offer(key, 1, 10)
    taken = c.take()
    c.offer("d", 1, 10)
    c.offer("b", 2, 12)  # came again while b's older update was out
    c.put_back(taken[1:])  # a was sent; b and c were not
    assert c.take() == [("b", 2, 12), ("c", 1, 10), ("d", 1, 10)]


def test_coalescer_discard_forgets_a_key_and_its_bytes():
    c: Coalescer[str, int] = Coalescer()
    c.offer("a", 1, 10)
    c.offer("b", 1, 20)
    c.discard("a")
    c.discard("zz")  # unknown: nothing happens
    assert "a" not in c and len(c) == 1 and c.waiting_bytes == 20


def test_coalescer_costs_one_update_per_key_however_many_come():
    c: Coalescer[int, bytes] = Coalescer()
    for n in range(10_000):
        c.offer(n % 3, b"x" * 100, 100)
    assert len(c) == 3 and c.waiting_bytes == 300


# ---- SlowClientBound ----------------------------------------------------------------


def test_a_client_that_is_not_behind_may_stay():
    bound = SlowClientBound(seconds=5, max_bytes=1000)
    assert bound.verdict(None, 10**9, now=100.0) is None


def test_a_client_behind_too_long_must_go():
    bound = SlowClientBound(seconds=5, max_bytes=1000)
    assert bound.verdict(100.0, 10, now=104.9) is None
    reason = bound.verdict(100.0, 10, now=105.0)
    assert reason is not None and "5.0 s" in reason and "bound 5 s" in reason


def test_a_client_behind_with_too_much_waiting_must_go_at_once():
    bound = SlowClientBound(seconds=5, max_bytes=1000)
    reason = bound.verdict(100.0, 1001, now=100.1)
    assert reason is not None and "1001 bytes" in reason


@pytest.mark.parametrize("seconds,max_bytes", [(0, 10), (-1, 10), (1, 0)])
def test_a_bound_must_be_positive(seconds, max_bytes):
    with pytest.raises(ValueError):
        SlowClientBound(seconds=seconds, max_bytes=max_bytes)


# ---- FrameGuard ----------------------------------------------------------------------


def header(command: int, payload: int, count: int = 1) -> bytes:
    return struct.pack(">HHHHII", command, payload, 0, count, 0, 0)


def extended(command: int, payload: int) -> bytes:
    return struct.pack(">HHHHII", command, 0xFFFF, 0, 0, 0, 0) + struct.pack(">II", payload, 1)


def test_max_message_bytes_as_epics_base():
    assert max_message_bytes(16384) == 16384 + 24
    assert max_message_bytes(100) == 16384  # never below MAX_TCP
    assert max_message_bytes(1_000_000) == 1_000_024


def test_messages_within_the_limit_pass_whatever_the_chunking():
    stream = header(0, 0) + header(4, 16) + b"p" * 16 + extended(4, 2000) + b"q" * 2000
    stream += header(23, 0)
    for size in (1, 3, 7, 16, 24, 100, len(stream)):
        guard = FrameGuard(4096)
        found = [guard.feed(stream[i : i + size]) for i in range(0, len(stream), size)]
        assert found == [None] * len(found), size


def test_between_messages_only_at_a_message_boundary():
    guard = FrameGuard(4096)
    assert guard.between_messages()
    message = header(19, 8) + b"v" * 8
    for cut in (1, 15, 16, 20):
        guard.feed(message[:cut])
        assert not guard.between_messages(), cut  # inside the header or the payload
        guard.feed(message[cut:])
        assert guard.between_messages(), cut


def test_an_oversized_extended_header_is_refused_before_its_payload():
    guard = FrameGuard(16408)
    assert guard.feed(header(0, 0)) is None
    claim = extended(4, 0xFFFFFFF0)
    assert guard.feed(claim[:20]) is None  # not a whole header yet
    found = guard.feed(claim[20:])
    assert found is not None
    assert found.command == 4 and found.message_bytes == 24 + 0xFFFFFFF0 and found.limit == 16408


def test_a_plain_header_at_the_limit_passes_and_one_byte_more_does_not():
    assert FrameGuard(16 + 1000).feed(header(4, 1000)) is None
    assert FrameGuard(16 + 999).feed(header(4, 1000)) is not None


def test_a_payload_that_looks_like_a_header_is_not_read_as_one():
    guard = FrameGuard(1000)
    bogus = extended(4, 10**9)  # inside a payload: must be skipped, not parsed
    assert guard.feed(header(4, len(bogus)) + bogus + header(0, 0)) is None


# ---- OncePerInterval -------------------------------------------------------------------


def test_one_report_per_key_per_interval_with_the_count_held_back():
    limiter = OncePerInterval(interval=60.0)
    assert limiter.allow(("h", "protocol"), 0.0) == (True, 0)
    assert limiter.allow(("h", "protocol"), 1.0) == (False, 0)
    assert limiter.allow(("h", "protocol"), 59.0) == (False, 0)
    assert limiter.allow(("h", "request"), 2.0) == (True, 0)  # another kind
    assert limiter.allow(("other", "protocol"), 2.0) == (True, 0)  # another host
    assert limiter.allow(("h", "protocol"), 60.0) == (True, 2)


def test_the_limiter_remembers_a_bounded_number_of_keys():
    limiter = OncePerInterval(interval=60.0, max_keys=100)
    for n in range(10_000):
        limiter.allow(n, float(n) / 1000)
    assert len(limiter) <= 100


# ---- the environment ------------------------------------------------------------------


def test_server_limits_defaults_and_settings():
    limits = server_limits({})
    assert limits.max_message_bytes == 16384 + 24
    assert limits.slow_client.seconds == DEFAULT_SLOW_CLIENT_TMO
    assert limits.slow_client.max_bytes == DEFAULT_SLOW_CLIENT_MAX_BYTES
    limits = server_limits(
        {
            "EPICS_CA_MAX_ARRAY_BYTES": "1000000",
            "EPICS_CAS_SLOW_CLIENT_TMO": "2.5",
            "EPICS_CAS_SLOW_CLIENT_MAX_BYTES": "65536",
        }
    )
    assert limits.max_message_bytes == 1_000_024
    assert limits.slow_client == SlowClientBound(seconds=2.5, max_bytes=65536)


@pytest.mark.parametrize(
    "name,value",
    [
        ("EPICS_CA_MAX_ARRAY_BYTES", "lots"),
        ("EPICS_CA_MAX_ARRAY_BYTES", "-1"),
        ("EPICS_CAS_SLOW_CLIENT_TMO", "0"),
        ("EPICS_CAS_SLOW_CLIENT_TMO", "inf"),
        ("EPICS_CAS_SLOW_CLIENT_TMO", "soon"),
        ("EPICS_CAS_SLOW_CLIENT_MAX_BYTES", "1.5"),
    ],
)
def test_a_bad_setting_is_one_clear_error(name, value):
    with pytest.raises(ServerSetupError) as caught:
        server_limits({name: value})
    assert str(caught.value).startswith(f"{name}={value!r} is not a positive")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("version", ["1.3.0", "1.3.1", "1.3.10.post1", "1.3rc1"])
def test_supported_caproto_versions(version):
    assert caproto_version_problem(version) is None


@pytest.mark.parametrize("version", ["1.2.0", "1.4.0", "2.0", "1.10.0", "nonsense", None])
def test_unsupported_caproto_versions_are_named(version):
    problem = caproto_version_problem(version)
    assert problem is not None and "caproto>=1.3,<1.4" in problem and "\n" not in problem


def test_a_command_no_client_may_send_is_refused_at_its_header():
    guard = FrameGuard(10**6, frozenset({0, 1, 4}))
    assert guard.feed(header(0, 0) + header(4, 8) + b"12345678") is None
    found = guard.feed(b"GET / HTTP/1.1\r\n")  # claims a 21536-byte payload: not waited for
    assert found is not None and not hasattr(found, "limit") and found.command == 0x4745
