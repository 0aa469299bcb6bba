"""A script's output through the real IOC: floods, a huge line, an exception's summary.

The IOC runs as a subprocess and is seen only through pyepics (libca), its log
files and psutil: it must stay responsive and bounded whatever a script prints.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import psutil

from tests.integration.conftest import write_script
from tests.integration.harness import Ioc, caget_text, wait_for

S01 = "BGRSCRPT_01"
LOG_MAX_BYTES = 256 * 1024
LOG_BACKUPS = 3
RSS_LIMIT = 150 * 1024 * 1024
FLOOD_SECONDS = 3.0

SETTINGS = f"""
[supervisor]
startsecs = 0.5
stop_timeout = 2.0
backoff_initial = 0.2
backoff_max = 1.0
start_limit_burst = 3
start_limit_interval = 30.0
log_max_bytes = {LOG_MAX_BYTES}
log_backups = {LOG_BACKUPS}
"""

# Numbered lines, as fast as the pipe takes them; then the rate, on stdout and MSG.
FLOOD = f"""
import os, time
from bgrscrpt_ioc import script
n = 0
start = time.monotonic()
while time.monotonic() - start < {FLOOD_SECONDS}:
    chunk = "".join([f"line {{i}}\\n" for i in range(n, n + 5000)]).encode()
    view = memoryview(chunk)
    while view:
        view = view[os.write(1, view):]
    n += 5000
elapsed = time.monotonic() - start
print(f"DONE {{n}} lines in {{elapsed:.2f}} s: {{int(n / elapsed)}} lines/s", flush=True)
script.status(f"flood over: {{int(n / elapsed)}} lines/s")
while True:
    time.sleep(0.05)
"""


def get(ioc: Ioc, suffix: str, **kw: Any) -> Any:
    """caget as the server has it now: pyepics' monitor cache may lag a change."""
    kw.setdefault("use_monitor", False)
    return ioc.get(suffix, **kw)


def text(ioc: Ioc, suffix: str) -> str:
    """A char waveform as UTF-8 text (pyepics' as_string takes each byte for a character)."""
    value = get(ioc, suffix)
    if value is None:
        return ""
    return bytes(bytearray(value)).split(b"\0", 1)[0].decode("utf-8")


def log_files(var_dir: Path) -> list[Path]:
    """The slot's log files, oldest first: BGRSCRPT_01.log.N … .log.1, BGRSCRPT_01.log."""
    logs = var_dir / "logs"
    backups = sorted(logs.glob(f"{S01}.log.*"), key=lambda p: -int(p.suffix[1:]))
    return [*backups, logs / f"{S01}.log"]


def check_log_pv(log: str) -> None:
    assert len(log) <= 5120, len(log)
    assert log.count("\n") + 1 <= 20, log.count("\n") + 1


def test_output_flood_leaves_the_ioc_responsive_and_bounded(make_ioc, config_dir):
    """≥100,000 lines/s for seconds: the IOC HEARTBEAT keeps answering and counting,
    RSS stays small, LOG shows the latest lines, the log file rotates within its bounds."""
    write_script(config_dir, "background_script.py", FLOOD)
    ioc = make_ioc(SETTINGS, slots=1).start()
    var_dir = ioc.var_dir
    ioc_process = psutil.Process(ioc.proc.pid)

    beats: list[tuple[float, int]] = []  # (when the caget answered, IOC HEARTBEAT)
    rss: list[int] = []
    newest_line_seen: list[int] = []
    most_backups = 0

    def sample() -> bool:
        nonlocal most_backups
        beat = get(ioc, "BGRSCRPT:HEARTBEAT", timeout=1.0)
        assert beat is not None, "the IOC did not answer a caget within 1 s"
        beats.append((time.monotonic(), int(beat)))
        rss.append(ioc_process.memory_info().rss)
        files = log_files(var_dir)
        most_backups = max(most_backups, len(files) - 1)
        for path in files:
            try:
                size = path.stat().st_size
            except FileNotFoundError:  # rotated away between listing and stat
                continue
            assert size <= LOG_MAX_BYTES, (path, size)
        log = text(ioc, f"{S01}:LOG")
        check_log_pv(log)
        numbers = [int(n) for n in re.findall(r"^line (\d+)$", log, re.MULTILINE)]
        if numbers:
            newest_line_seen.append(max(numbers))
        return text(ioc, f"{S01}:MSG").startswith("flood over")

    wait_for(sample, FLOOD_SECONDS + 15, "the flood to end")

    # The script's rate is what the IOC drained: a slow reader would have blocked it.
    # (MSG comes through the notify socket: the output may still be in the pipe.)
    summary = re.compile(r"^DONE (\d+) lines in [\d.]+ s: (\d+) lines/s$", re.MULTILINE)
    log = wait_for(
        lambda: summary.search(text(ioc, f"{S01}:LOG")) and text(ioc, f"{S01}:LOG"),
        5,
        "the DONE line in LOG",
    )
    done = summary.search(log)
    assert done
    total, rate = int(done.group(1)), int(done.group(2))
    assert rate >= 100_000, f"only {rate} lines/s"

    # Responsive: every sample answered, the count went up a beat at a time and kept
    # pace with the clock (a blocked loop loses beats).
    steps = [b - a for (_, a), (_, b) in zip(beats, beats[1:], strict=False)]
    assert steps and all(0 <= step <= 1 for step in steps), steps
    elapsed = beats[-1][0] - beats[0][0]
    assert elapsed >= FLOOD_SECONDS - 1.0, elapsed
    assert beats[-1][1] - beats[0][1] >= elapsed - 1.5, (beats[0], beats[-1])

    assert max(rss) < RSS_LIMIT, f"IOC RSS reached {max(rss) / 2**20:.0f} MB"

    # LOG moved with the flood and ends with its latest lines.
    assert len(set(newest_line_seen)) >= 3, newest_line_seen
    assert newest_line_seen == sorted(newest_line_seen)
    check_log_pv(log)
    tail = log.splitlines()
    assert tail[-1] == done.group(0)
    assert tail[:-1] == [f"line {i}" for i in range(total - len(tail) + 1, total)]

    # Rotated, never more than log_backups old files, and nothing lost in between.
    files = log_files(var_dir)
    assert most_backups == LOG_BACKUPS
    assert len(files) == LOG_BACKUPS + 1
    kept = b"".join(path.read_bytes() for path in files).decode()
    numbers = [int(n) for n in re.findall(r"^line (\d+)$", kept, re.MULTILINE)]
    assert len(numbers) > 10_000
    assert numbers == list(range(numbers[0], total)), "lines lost or reordered in rotation"
    assert done.group(0) in files[-1].read_text()
    assert sum(path.stat().st_size for path in files) <= (LOG_BACKUPS + 1) * LOG_MAX_BYTES


def test_a_megabyte_line_without_newline_then_exit_1(make_ioc, config_dir):
    """1 MB with no newline, then exit 1: the IOC lives on, LOG stays bounded, MSG says
    how the script exited."""
    write_script(
        config_dir,
        "background_script.py",
        """
        import os, sys, time
        time.sleep(0.8)  # past startsecs: a run that ends, not a failed start
        view = memoryview(b"x" * 1_000_000)
        while view:
            view = view[os.write(1, view):]
        sys.exit(1)
        """,
    )
    # The default log_max_bytes (10 MB): the whole line fits in one log file.
    toml = '[supervisor]\nstartsecs = 0.5\nautorestart = "Off"\n'
    ioc = make_ioc(toml, slots=1).start()
    ioc.wait_status("EXITED", timeout=15)
    wait_for(lambda: text(ioc, f"{S01}:MSG") == "exited with code 1", 5, "MSG")
    assert get(ioc, f"{S01}:EXIT_CODE") == 1
    log = wait_for(lambda: text(ioc, f"{S01}:LOG"), 5, "LOG")
    check_log_pv(log)
    assert set(log) <= {"x", "…"} and len(log) >= 5000, log[:100]
    assert ioc.proc.poll() is None
    beat = get(ioc, "BGRSCRPT:HEARTBEAT")
    wait_for(lambda: get(ioc, "BGRSCRPT:HEARTBEAT") > beat, 5, "the IOC HEARTBEAT")
    # The whole line reached the log file, all the same.
    logged = (ioc.var_dir / "logs" / f"{S01}.log").read_bytes()
    assert b"x" * 1_000_000 in logged

    # The next run starts a clean line.
    (config_dir / "background_script.py").write_text("print('second run')\n")
    ioc.put(f"{S01}:START", 1)
    wait_for(lambda: text(ioc, f"{S01}:LOG").endswith("…\nsecond run"), 10, "the next run's LOG")
    check_log_pv(text(ioc, f"{S01}:LOG"))


def test_an_exception_summary_reaches_msg(make_ioc, config_dir):
    """An uncaught exception: MSG gives the exit code and the exception's last line,
    both for a run that ends (AUTORESTART Off) and for a failed start (slot 02)."""
    write_script(
        config_dir,
        "background_script.py",
        "import time\ntime.sleep(0.8)\nprint('dividing', flush=True)\n1/0\n",
    )
    write_script(config_dir, "background_script2.py", "raise KeyError('no such block')\n")
    toml = SETTINGS + '\n[slots.BGRSCRPT_01]\nautorestart = "Off"\n'
    ioc = make_ioc(toml, slots=2).start()

    ioc.wait_status("EXITED")
    expected = "exited with code 1: ZeroDivisionError: division by zero"
    wait_for(lambda: text(ioc, f"{S01}:MSG") == expected, 5, f"MSG == {expected!r}")
    log = text(ioc, f"{S01}:LOG")
    assert "dividing\nTraceback (most recent call last):" in log
    assert log.endswith("ZeroDivisionError: division by zero")

    # Failed starts: the summary rides along in BACKOFF and in FATAL.
    ioc.wait_status("FATAL", slot="BGRSCRPT_02", timeout=15)
    msg = text(ioc, "BGRSCRPT_02:MSG")
    assert msg.startswith("FATAL: 3 starts within 30 s; last: failed to start: exited with code 1")
    assert "KeyError: 'no such block'" in msg


def test_log_is_text_for_c_clients(make_ioc, config_dir):
    """A NUL, ANSI colours, a window-title escape, BEL, a progress bar on one line and
    bytes that are not UTF-8: ``caget -S`` shows every line, readable, up to the last;
    the log file keeps the raw bytes."""
    raw = (
        b"before\x00after\n"
        b"\x1b[1;31mred\x1b[0m and \x1b]0;title\x07plain\x07\n"
        + b"".join(b"\rprogress %3d%%" % i for i in range(0, 101, 5))
        + b"\nlatin-1 caf\xe9\n"
        b"last line\n"
    )
    write_script(
        config_dir,
        "background_script.py",
        f"""
        import os, time
        os.write(1, {raw!r})
        time.sleep(60)
        """,
    )
    ioc = make_ioc(SETTINGS, slots=1).start()
    expected = "\n".join(
        [
            r"before\x00after",
            r"red and plain\x07",
            "progress 100%",
            r"latin-1 caf\xe9",
            "last line",
        ]
    )
    wait_for(lambda: caget_text(ioc, f"{S01}:LOG") == expected, 10, f"caget -S LOG: {expected!r}")
    assert text(ioc, f"{S01}:LOG") == expected  # libca through pyepics alike
    assert raw in (ioc.var_dir / "logs" / f"{S01}.log").read_bytes()
