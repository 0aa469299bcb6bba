"""The ``waitfor`` family: wait for a block, a time, DAE counts, a run state or motion.

Same conditions, polling interval and console messages as genie_python
("Start time: …", "Waiting for T1=6", "Waitfor timed out after 5 seconds",
"End time: …"); a PV that fails while waiting is reported once (again after 5
minutes or when the error changes) and the wait goes on.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from datetime import datetime, timedelta
from time import sleep, strptime
from typing import Any

from genie_python.utilities import get_time_delta

NUMERIC_TYPE = (float, int)
DELAY_IN_WAIT_FOR_SLEEP_LOOP = 0.1
SECONDS_UNTIL_RENOTIFY_EXCEPTION = 5 * 60


def _clock() -> str:
    return datetime.now().time().strftime("%H:%M:%S")


class _ErrorReporter:
    """Says when the wait's condition starts failing, again every 5 minutes or when the
    error changes, and once when it clears."""

    def __init__(self) -> None:
        self.failing: Exception | None = None
        self.told = datetime.now()

    def __call__(self, exc: Exception | None) -> None:
        if exc is None:
            if self.failing is not None:
                self.failing = None
                print(f"{datetime.now()}: Exception cleared")
            return
        renotify = (datetime.now() - self.told).seconds >= SECONDS_UNTIL_RENOTIFY_EXCEPTION
        if self.failing is None or renotify or not isinstance(exc, type(self.failing)):
            print(f"{datetime.now()}: Exception in waitfor loop: {exc.__class__.__name__}: {exc}")
            self.told = datetime.now()
        self.failing = exc


class WaitForController:
    def __init__(self, api: Any) -> None:
        self.api = api
        self.time_delta: timedelta | None = None
        self.start_time: datetime | None = None
        self.block: str | None = None
        self.low: Any = None
        self.high: Any = None

    def start_waiting(
        self,
        block: str | None = None,
        value: Any = None,
        lowlimit: float | None = None,
        highlimit: float | None = None,
        maxwait: float | None = None,
        wait_all: bool = False,
        seconds: float | None = None,
        minutes: float | None = None,
        hours: float | None = None,
        time: str | None = None,
        frames: int | None = None,
        raw_frames: int | None = None,
        uamps: float | None = None,
        mevents: float | None = None,
        early_exit: Callable[[], bool] = lambda: False,
        quiet: bool = False,
    ) -> None:
        """Wait until one condition (all with ``wait_all``) is met, or ``maxwait`` passes."""
        say = (lambda text: None) if quiet else print
        say(f"Start time: {_clock()}")
        timeout_msg = ""
        if maxwait is not None:
            if not isinstance(maxwait, NUMERIC_TYPE):
                raise Exception("The value entered for maxwait was invalid, it should be numeric.")
            timeout_msg = f"[timeout={timedelta(seconds=maxwait).total_seconds()}]"
        for what, given in (("seconds", seconds), ("minutes", minutes), ("hours", hours)):
            if given is not None and not isinstance(given, NUMERIC_TYPE):
                raise Exception(f"Invalid value entered for {what}")
        if time is not None:
            try:
                parsed = strptime(time, "%H:%M:%S")
            except Exception:
                raise Exception(
                    "Time string entered was invalid. It should be of the form HH:MM:SS"
                ) from None
            seconds, minutes, hours = parsed.tm_sec, parsed.tm_min, parsed.tm_hour
        for what, given, kind, text in (
            ("frames", frames, int, "frames"),
            ("raw_frames", raw_frames, int, "raw frames"),
            ("uamps", uamps, NUMERIC_TYPE, "uamps"),
            ("mevents", mevents, NUMERIC_TYPE, "million events"),
        ):
            if given is not None:
                if not isinstance(given, kind):
                    raise Exception(f"Invalid value entered for {what}")
                say(f"Waiting for {given} {text} {timeout_msg}")
        if block is not None:
            if not self.api.block_exists(block):
                raise NameError(f'No block with the name "{block}" exists')
            block = self.api.correct_blockname(block, add_prefix=False)
            if value is not None and not isinstance(value, NUMERIC_TYPE + (str,)):
                raise Exception(
                    "The value entered for the block was invalid, it should be numeric or a string."
                )
            if lowlimit is not None and not isinstance(lowlimit, NUMERIC_TYPE):
                raise Exception("The value entered for lowlimit was invalid, it should be numeric.")
            if highlimit is not None and not isinstance(highlimit, NUMERIC_TYPE):
                raise Exception(
                    "The value entered for highlimit was invalid, it should be numeric."
                )
        self.time_delta = get_time_delta(seconds, minutes, hours)
        self.start_time = datetime.now() if self.time_delta is not None else None
        if self.time_delta is not None:
            say(f"Waiting for {self.time_delta.total_seconds()} seconds {timeout_msg}")
        self._init_wait_block(block, value, lowlimit, highlimit, say, timeout_msg)
        started = datetime.now()
        report = _ErrorReporter()
        while True:
            if maxwait is not None and datetime.now() - started >= timedelta(seconds=maxwait):
                print(f"Waitfor timed out after {maxwait} seconds")
                print(f"End time: {_clock()}")
                return
            if early_exit():
                print("Early exit handler evaluated to true in waitfor - stopping wait")
                print(f"End time: {_clock()}")
                return
            try:
                waiting = []
                if self.block is not None:
                    waiting.append(self._block_not_there_yet())
                if self.start_time is not None and self.time_delta is not None:
                    waiting.append(datetime.now() - self.start_time < self.time_delta)
                if frames is not None:
                    waiting.append(self.api.dae.get_good_frames() < frames)
                if raw_frames is not None:
                    waiting.append(self.api.dae.get_raw_frames() < raw_frames)
                if uamps is not None:
                    waiting.append(self.api.dae.get_uamps() < uamps)
                if mevents is not None:
                    waiting.append(self.api.dae.get_mevents() < mevents)
                report(None)
                if not waiting:
                    print(f"End time: {_clock()}")
                    return
                if (wait_all and True not in waiting) or (not wait_all and False in waiting):
                    say(f"End time: {_clock()}")
                    return
            except Exception as exc:
                report(exc)
            sleep(DELAY_IN_WAIT_FOR_SLEEP_LOOP)

    def _init_wait_block(
        self, block: str | None, value: Any, low: Any, high: Any, say: Any, timeout_msg: str
    ) -> None:
        self.block = block
        if block is None:
            return
        self.low, self.high = (value, value) if value is not None else (None, None)
        if isinstance(low, NUMERIC_TYPE):
            self.low = low
        if isinstance(high, NUMERIC_TYPE):
            self.high = high
        if (
            isinstance(self.low, NUMERIC_TYPE)
            and isinstance(self.high, NUMERIC_TYPE)
            and self.low > self.high
        ):
            self.low, self.high = self.high, self.low
            # Spaced as genie_python prints it (a line continuation inside its string).
            print(
                "WARNING: The highlimit and lowlimit have been" + " " * 17 + "swapped to "
                f"lowlimit({self.low}) and highlimit({self.high})"
            )
        if self.low is None and self.high is None:
            raise Exception(f"No limit(s) set for {block}")
        if self.low == self.high:
            say(f"Waiting for {block}={self.low}{timeout_msg}")
        else:
            say(f"Waiting for {block} (lowlimit={self.low}, highlimit={self.high}){timeout_msg}")

    def _block_not_there_yet(self) -> bool:
        current = self.api.get_block_value(self.block)
        if not isinstance(current, NUMERIC_TYPE):
            return current != self.low
        try:
            there = True
            if self.low is not None:
                there = current >= float(self.low)
            if self.high is not None:
                there = current <= float(self.high) and there
        except ValueError:
            there = current == self.low
        return not there

    def wait_for_runstate(
        self, state: str, maxwaitsecs: int = 3600, onexit: bool = False, quiet: bool = False
    ) -> None:
        """Wait until the run state is ``state`` (or, with ``onexit``, has left it)."""
        state = state.upper().strip()
        started = datetime.now()
        while True:
            sleep(0.3)  # as genie_python: let run control settle first
            current = self.api.dae.get_run_state()
            if onexit:
                if current != state and not self.api.dae.in_transition():
                    return
            elif current == state:
                return
            if datetime.now() - started >= timedelta(seconds=maxwaitsecs):
                return


class WaitForMoveController:
    """``waitfor_move``: all motion (``$(P)CS:MOT:MOVING``) or given blocks' ``:DMOV``."""

    POLL = 0.02

    def __init__(self, api: Any, motion_pv: str) -> None:
        self._api = api
        self._motion_pv = motion_pv
        self._missing: list[str] = []

    def wait(self, start_timeout: float | None = None, move_timeout: float | None = None) -> None:
        self._do_wait(start_timeout, move_timeout, self._any_motion)

    def wait_specific(
        self,
        blocks: list[str],
        start_timeout: float | None = None,
        move_timeout: float | None = None,
    ) -> None:
        self._do_wait(start_timeout, move_timeout, lambda: self._moving(blocks))
        self._report(blocks)

    def _do_wait(
        self, start_timeout: float | None, move_timeout: float | None, moving: Callable[[], bool]
    ) -> None:
        sleep(0.01)
        self._missing = []
        if start_timeout is not None and start_timeout <= 0:
            start_timeout = 0
        if move_timeout is not None and move_timeout <= 0:
            move_timeout = None
        if start_timeout is not None:
            begun = _time.monotonic()
            while not moving() and _time.monotonic() - begun < start_timeout:
                sleep(self.POLL)
        begun = _time.monotonic()
        while moving():
            sleep(self.POLL)
            if move_timeout is not None and _time.monotonic() - begun >= move_timeout:
                return

    def _any_motion(self) -> bool:
        return self._api.get_pv_value(self._motion_pv) != 0

    def _moving(self, blocks: list[str]) -> bool:
        for block in blocks:
            if block in self._missing:
                continue
            try:
                dmov = self._api.get_pv_value(
                    self._api.get_pv_from_block(block) + ":DMOV", attempts=1
                )
            except OSError:
                print(f"Could not connect to block {block} so ignoring it")
                self._missing.append(block)
                continue
            if dmov == 0:
                return True
        return False

    def _report(self, blocks: list[str]) -> None:
        sleep(0.5)
        present = [b for b in blocks if b not in self._missing]
        minor, major, _ = self._api.check_alarms(present)
        for block in major:
            print(f"Block {block} is in alarm: MAJOR")
        for block in minor:
            print(f"Block {block} is in alarm state: MINOR")
        for block in self._api.check_limit_violations(present):
            print(f"Block {block} has soft limit violations")
        for block in self._missing:
            print(f"Block {block} could not be found")
