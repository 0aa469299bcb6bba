"""OutputCapture: log rotation, bounded tail, exception summary."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from bgrscrpt_ioc.supervisor.output import OutputCapture
from bgrscrpt_ioc.supervisor.terminal import printable

TRACEBACK = (
    b"working\n"
    b"Traceback (most recent call last):\n"
    b'  File "/cfg/background_script.py", line 4, in <module>\n'
    b"    main()\n"
    b'  File "/cfg/background_script.py", line 2, in main\n'
    b"    1 / 0\n"
    b"    ~~^~~\n"
    b"ZeroDivisionError: division by zero\n"
)


@pytest.fixture
def capture(tmp_path):
    cap = OutputCapture(tmp_path / "logs" / "BGRSCRPT_01.log")
    yield cap
    cap.close()


def python_output(tmp_path, source: str) -> bytes:
    """What the real interpreter prints for ``source`` (stdout and stderr together)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=30,
        check=False,
    ).stdout


# ---- log file ----------------------------------------------------------------


def test_log_written_at_once_with_parents_created(tmp_path):
    path = tmp_path / "var" / "logs" / "BGRSCRPT_01.log"
    cap = OutputCapture(path)
    try:
        cap.feed(b"hello")
        assert path.read_bytes() == b"hello"  # no buffering: a reader sees it now
        cap.mark("--- started pid 1 ---")
        cap.feed(b"world\n")
        cap.mark("--- exited ---")
        assert path.read_bytes() == b"hello\n--- started pid 1 ---\nworld\n--- exited ---\n"
        assert "---" not in cap.tail
    finally:
        cap.close()
    cap.close()


def test_log_rotates_by_size(tmp_path):
    path = tmp_path / "BGRSCRPT_01.log"
    cap = OutputCapture(path, max_bytes=100, backups=2)
    fed = b"".join(b"line %03d %s\n" % (i, b"x" * 20) for i in range(40))
    try:
        for i in range(0, len(fed), 30):
            cap.feed(fed[i : i + 30])
    finally:
        cap.close()
    files = [path.with_name(path.name + suffix) for suffix in (".2", ".1", "")]
    assert all(f.exists() and 0 < f.stat().st_size <= 100 for f in files)
    assert not path.with_name(path.name + ".3").exists()
    # Oldest to newest, the files hold the end of what was fed, in order.
    assert fed.endswith(b"".join(f.read_bytes() for f in files))


def test_log_appends_across_instances_and_rotates_with_no_backups(tmp_path):
    path = tmp_path / "BGRSCRPT_01.log"
    cap = OutputCapture(path, max_bytes=10, backups=0)
    cap.feed(b"12345")
    cap.close()
    cap = OutputCapture(path, max_bytes=10, backups=0)
    cap.feed(b"6789")
    assert path.read_bytes() == b"123456789"
    cap.feed(b"abc")  # would pass max_bytes: the file starts again
    cap.close()
    assert path.read_bytes() == b"abc"
    assert not path.with_name(path.name + ".1").exists()


# ---- tail --------------------------------------------------------------------


def test_tail_is_last_lines_including_partial(capture):
    v0 = capture.version
    capture.feed(b"".join(b"line %d\n" % i for i in range(30)))
    assert capture.version > v0
    assert capture.tail == "\n".join(f"line {i}" for i in range(10, 30))
    capture.feed(b"prompt: ")
    assert capture.tail.endswith("line 29\nprompt: ")
    assert capture.tail.count("\n") == 19


def test_lines_split_across_chunks_and_bad_utf8(capture):
    for byte in "héllo\nwörld\n".encode():
        capture.feed(bytes([byte]))
    capture.feed(b"bad \xff\xfe end\r\n")
    # Bytes that are not UTF-8 are shown as what they are; the CRLF's \r is not shown.
    assert capture.tail == "héllo\nwörld\nbad \\xff\\xfe end"


def test_tail_keeps_the_end_when_too_long(capture):
    for i in range(20):
        capture.feed(b"%02d" % i + b"y" * 998 + b"\n")
    assert len(capture.tail) == 5120
    assert capture.tail.endswith("19" + "y" * 998)


def test_megabyte_line_without_newline_stays_bounded(tmp_path):
    cap = OutputCapture(tmp_path / "x.log", tail_chars=100)
    try:
        chunk = b"z" * 65536
        for _ in range(16):
            cap.feed(chunk)
            assert len(cap._partial) <= 4 * 100
            assert len(cap.tail) <= 100
        cap.feed(b"\nnext\n")
        assert len(cap._partial) == 0
        first, second = cap._lines
        assert len(first) == 100 and first.endswith("…") and first.startswith("zzz")
        assert second == "next"
        assert len(cap.tail) == 100 and cap.tail.endswith("z…\nnext")
        # The log file still has every byte.
        assert (tmp_path / "x.log").stat().st_size == 16 * 65536 + 6
    finally:
        cap.close()


def test_many_lines_stay_bounded(capture):
    lines = b"".join(b"%06d some output of a busy script\n" % i for i in range(100_000))
    for i in range(0, len(lines), 65536):
        capture.feed(lines[i : i + 65536])
        assert len(capture._lines) <= 20
        assert len(capture._partial) <= 4 * 5120
    assert capture.tail.splitlines() == [
        f"{i:06d} some output of a busy script" for i in range(99_980, 100_000)
    ]


def test_new_run_ends_partial_line(capture):
    capture.feed(b"no newline at the end")
    capture.new_run()
    capture.feed(b"second run\n")
    assert capture.tail == "no newline at the end\nsecond run"


# ---- exception summary -------------------------------------------------------


def test_summary_of_a_traceback(capture):
    capture.feed(TRACEBACK)
    assert capture.exception_summary == "ZeroDivisionError: division by zero"


@pytest.mark.parametrize("size", [1, 2, 7, 35, 64])
def test_summary_across_chunk_boundaries(capture, size):
    for i in range(0, len(TRACEBACK), size):
        capture.feed(TRACEBACK[i : i + size])
    assert capture.exception_summary == "ZeroDivisionError: division by zero"


def test_summary_before_its_newline(capture):
    capture.feed(TRACEBACK[:-1])  # the process died before the newline
    assert capture.exception_summary == "ZeroDivisionError: division by zero"


def test_summary_from_real_python(tmp_path, capture):
    capture.feed(
        python_output(
            tmp_path,
            """
            print("working")
            def f(n):
                return f(n + 1)
            f(0)
            """,
        )
    )
    # The traceback is far longer than the tail: its summary is found all the same.
    assert capture.exception_summary.startswith("RecursionError: maximum recursion depth")


def test_summary_of_real_syntax_error(tmp_path, capture):
    output = python_output(tmp_path, "print('ok')\nx = (1,\n")
    assert b"Traceback" not in output  # Python prints File/source/caret lines only
    capture.feed(output)
    assert capture.exception_summary == "SyntaxError: '(' was never closed"


def test_summary_of_chained_exceptions_is_the_last(tmp_path, capture):
    capture.feed(
        python_output(
            tmp_path,
            """
            try:
                {}["missing"]
            except KeyError:
                raise RuntimeError("lookup failed")
            """,
        )
    )
    assert capture.exception_summary == "RuntimeError: lookup failed"


def test_summary_of_custom_exception_without_message(capture):
    capture.feed(b'Traceback (most recent call last):\n  File "x", line 1\nmod.Custom\n')
    assert capture.exception_summary == "mod.Custom"


def test_summary_is_cut(capture):
    capture.feed(b'Traceback (most recent call last):\n  File "x"\nValueError: ' + b"v" * 5000)
    capture.feed(b"\n")
    assert len(capture.exception_summary) == 200
    assert capture.exception_summary.startswith("ValueError: vvv")


def test_no_summary_from_ordinary_output(capture):
    capture.feed(b'files:\n  File "a.txt"\n  File "b.txt"\nLoading: 50%\nTraceback of run\n')
    assert capture.exception_summary == ""


def test_new_run_forgets_summary(capture):
    capture.feed(TRACEBACK)
    capture.new_run()
    assert capture.exception_summary == ""
    capture.feed(b"all good\n")
    assert capture.exception_summary == ""


def test_later_traceback_replaces_earlier(capture):
    capture.feed(TRACEBACK)
    capture.feed(TRACEBACK.replace(b"ZeroDivisionError: division by zero", b"KeyError: 'a'"))
    assert capture.exception_summary == "KeyError: 'a'"


def test_unfinished_traceback_keeps_previous_summary(capture):
    capture.feed(TRACEBACK)
    capture.feed(b'Traceback (most recent call last):\n  File "x", line 1\n')
    assert capture.exception_summary == "ZeroDivisionError: division by zero"


# ---- text for Channel Access clients -------------------------------------------


def test_nul_and_controls_are_shown_not_passed(capture):
    capture.feed(b"before\x00after\x07 bell\x08 del\x7f\ttab\n")
    assert capture.tail == "before\\x00after\\x07 bell\\x08 del\\x7f\ttab"
    assert "\x00" not in capture.tail


def test_ansi_sequences_are_stripped(capture):
    capture.feed(
        b"\x1b[1;31mred\x1b[0m \x1b]0;title\x07plain \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"
        b" \x1b(Bcharset \x1b[2Kerased \xc2\x9b31mc1\n"
    )
    assert capture.tail == "red plain link charset erased c1"


def test_carriage_returns_overwrite_like_a_terminal(capture):
    capture.feed(b"progress 10%\rprogress 20%\rprogress 100%\n")
    capture.feed(b"abcdef\rXY\n")
    capture.feed(b"windows line\r\n")
    assert capture.tail == "progress 100%\nXYcdef\nwindows line"


def test_progress_bar_without_newline_shows_its_last_state_and_stays_bounded(tmp_path):
    cap = OutputCapture(tmp_path / "x.log", tail_chars=100)
    try:
        for chunk in range(200):
            done = range(chunk * 5000, (chunk + 1) * 5000)
            cap.feed(b"".join(b"\r\x1b[32m%7d/%d\x1b[0m" % (i, 10**6) for i in done))
            assert len(cap._partial) <= 4 * 100
        assert cap.tail == " 999999/1000000"
        cap.feed(b"\rdone\n")
        assert cap.tail == "done999/1000000"
        # The log file keeps every raw byte.
        assert b"\x1b[32m" in (tmp_path / "x.log").read_bytes()[:100]
    finally:
        cap.close()


def test_a_long_line_ended_by_carriage_returns_shows_its_final_state(capture):
    capture.feed(b"x" * 100_000 + b"\r" + b"\r".join(b"%d%%" % i for i in range(101)) + b"\n")
    assert capture.tail.startswith("100%xxx") and capture.tail.endswith("…")


def test_summary_is_text(capture):
    capture.feed(TRACEBACK.replace(b"division by zero", b"bad\x00\x1b[31mzero"))
    assert capture.exception_summary == "ZeroDivisionError: bad\\x00zero"


def test_status_text_is_made_printable_the_same_way():
    assert printable("calibrated 3 of 5") == "calibrated 3 of 5"
    assert printable("a\x00b\x1b[31mc\x1b[0m\nnext") == "a\\x00bc next"
    assert printable("10%\r100%") == "100%"
