"""When a CA client searches again after a circuit ended (bgrscrpt_ioc.core.reconnect)."""

from __future__ import annotations

from bgrscrpt_ioc.core.reconnect import CircuitRetry

A, B = ("10.0.0.1", 5064), ("10.0.0.2", 5064)


def test_a_circuit_that_served_for_a_while_is_searched_for_again_at_once():
    retry = CircuitRetry(first=0.25, cap=5.0, healthy_after=10.0)
    assert retry.ended(A, 3600.0) == 0.0
    assert retry.failures(A) == 0


def test_circuits_that_end_young_or_never_connect_wait_longer_each_time_up_to_the_cap():
    retry = CircuitRetry(first=0.25, cap=5.0, healthy_after=10.0)
    delays = [retry.ended(A, None if n % 2 else 0.5) for n in range(8)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert retry.delay(A) == 5.0
    assert retry.failures(A) == 8


def test_one_healthy_circuit_resets_the_back_off_and_servers_are_counted_apart():
    retry = CircuitRetry(first=0.25, cap=5.0, healthy_after=10.0)
    for _ in range(4):
        retry.ended(A, None)
    assert retry.ended(B, None) == 0.25  # another server: its own count
    assert retry.ended(A, 10.0) == 0.0
    assert retry.delay(A) == 0.0
    assert retry.ended(A, 1.0) == 0.25


def test_a_server_restarted_again_and_again_is_searched_for_at_once_every_time():
    """Circuits that served their channels end young when the IOC is restarted every
    few seconds (alarm recovery restarting a flapping device): each is still a circuit
    lost through no fault of its own. Counted as failures, the fifth restart's IOC was
    found 5 s late, and recovery took four times as long."""
    retry = CircuitRetry(first=0.25, cap=5.0, healthy_after=10.0)
    assert [retry.ended(A, 1.4, served=True) for _ in range(10)] == [0.0] * 10
    assert retry.failures(A) == 0
    # One that never served still counts, and a served one clears the count.
    assert retry.ended(A, 0.1) == 0.25
    assert retry.ended(A, 0.1, served=True) == 0.0
    assert retry.delay(A) == 0.0
