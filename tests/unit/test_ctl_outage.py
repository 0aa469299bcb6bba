"""``bgrscrpt start``/``stop`` when the IOC stops answering after the command went
out (its host's link down): the command waits for it to its deadline, and says
what is known when it does not come back. A fake client stands in for CA."""

from __future__ import annotations

import pytest

from bgrscrpt_ioc.ctl import commands
from bgrscrpt_ioc.ctl.ca import CaError


class OutageClient:
    """Slot PVs in a dict; while ``down`` reads fail as over a cut link. ``script``
    is called on every read, to move the slot and the link along."""

    prefix = "T:"

    def __init__(self, status: str, script=lambda client: None):
        self.values = {
            "BGRSCRPT:VERSION": "0.1.0",
            "BGRSCRPT_01:STATUS": status,
            "BGRSCRPT_01:START_CNT": 1,
            "BGRSCRPT_01:PID": 0,
            "BGRSCRPT_01:MSG": "",
        }
        self.down = False
        self.reads = 0
        self.script = script
        self.puts: list[str] = []

    def name(self, suffix: str) -> str:
        return self.prefix + suffix

    def connected(self, suffix: str, timeout: float | None = None) -> bool:
        return not self.down and suffix in self.values

    def value(self, suffix: str):
        self.reads += 1
        self.script(self)
        if self.down:
            raise CaError(f"read of {self.name(suffix)} failed: no reply from the IOC within 2 s")
        return self.values[suffix]

    def write(self, suffix: str, value) -> None:
        if self.down:
            raise CaError(f"put to {self.name(suffix)} failed: no reply from the IOC within 5 s")
        self.puts.append(suffix)


def outage_then_running(client: OutageClient) -> None:
    """The link goes down at the first wait, the run starts, the link returns."""
    if not client.puts:
        client.reads = 0
    elif client.reads == 1:
        client.down = True
    elif client.reads == 6:
        client.down = False
        client.values.update({"BGRSCRPT_01:STATUS": "RUNNING", "BGRSCRPT_01:START_CNT": 2})
        client.values["BGRSCRPT_01:PID"] = 4321


def test_start_waits_through_an_outage_and_sees_the_run():
    client = OutageClient("STOPPED", outage_then_running)
    text = commands.start(client, "BGRSCRPT_01", timeout=10)  # type: ignore[arg-type]
    assert text == "BGRSCRPT_01: started, pid 4321"
    assert client.puts == ["BGRSCRPT_01:START"]


def test_start_says_the_command_went_out_when_the_ioc_never_answers_again():
    def lost_for_good(client: OutageClient) -> None:
        client.down = bool(client.puts)

    client = OutageClient("STOPPED", lost_for_good)
    with pytest.raises(commands.Failed) as failed:
        commands.start(client, "BGRSCRPT_01", timeout=0.5)  # type: ignore[arg-type]
    assert str(failed.value) == (
        "BGRSCRPT_01: START sent, then the IOC stopped answering (read of "
        "T:BGRSCRPT_01:START_CNT failed: no reply from the IOC within 2 s); its outcome "
        "is unknown after 0.5 s: see `bgrscrpt status`"
    )


def test_stop_waits_through_an_outage():
    def outage_then_stopped(client: OutageClient) -> None:
        if not client.puts:
            client.reads = 0
        elif client.reads == 1:
            client.down = True
        elif client.reads == 5:
            client.down = False
            client.values["BGRSCRPT_01:STATUS"] = "STOPPED"

    client = OutageClient("RUNNING", outage_then_stopped)
    text = commands.stop(client, "BGRSCRPT_01", timeout=10)  # type: ignore[arg-type]
    assert text.startswith("BGRSCRPT_01: STOPPED")
