"""CPU, RSS and NPROC of a slot's whole process tree, and the memory limit, on the real IOC.

Run with a cgroup per slot and with the keeper as subreaper: the figures come
from different places (cpu.stat and cgroup.procs, or /proc below the keeper)
and must tell the same story.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.integration.conftest import write_script
from tests.integration.harness import Ioc, caget_text, process_gone, wait_for
from tests.integration.mechanisms import start

S01 = "BGRSCRPT_01"

# A script that idles and a child of it, in its own session, that holds ~60 MB and
# burns a core once "burn" exists in the config dir.
BUSY_CHILD = """
import os, subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c",
     "import os, time\\n"
     "ballast = bytearray(60 * 2**20)\\n"
     "for i in range(0, len(ballast), 4096): ballast[i] = 1\\n"
     "while not os.path.exists('burn'): time.sleep(0.05)\\n"
     "while True: pass\\n"],
    start_new_session=True,
)
with open("child.pid", "w") as f:
    f.write(str(child.pid))
while True:
    time.sleep(1)
"""

SETTINGS = """
[supervisor]
startsecs = 0.5
stop_timeout = 2.0
backoff_initial = 0.5
backoff_max = 1.0
start_limit_burst = 3
start_limit_interval = 60.0
"""


def test_cpu_rss_and_nproc_of_the_whole_tree(mechanism, make_ioc, config_dir):
    write_script(config_dir, "background_script.py", BUSY_CHILD)
    ioc = start(make_ioc, mechanism, SETTINGS)
    ioc.wait_status("RUNNING")
    wait_for(lambda: ioc.get(f"{S01}:NPROC") == 2, 10, "NPROC 2 (the script and its child)")
    # The child's ballast is in RSS: the script alone is ~10 MB.
    rss = wait_for(lambda: (v := ioc.get(f"{S01}:RSS")) and v >= 60 and v, 10, "RSS >= 60 MB")
    assert rss < 200
    idle = ioc.get(f"{S01}:CPU")
    assert idle is not None and idle < 50

    (config_dir / "burn").touch()
    # A core's worth, minus what others on a shared machine take from it.
    wait_for(lambda: ioc.get(f"{S01}:CPU") >= 50, 10, "CPU >= 50 % of a core")
    assert ioc.get(f"{S01}:CPU") <= 110

    units = {pv: ioc.get(f"{S01}:{pv}.EGU", as_string=True) for pv in ("CPU", "RSS", "MEMORY_MAX")}
    assert units == {"CPU": "%", "RSS": "MB", "MEMORY_MAX": "MB"}

    ioc.put(f"{S01}:STOP", 1)
    ioc.wait_status("STOPPED")
    wait_for(lambda: ioc.get(f"{S01}:NPROC") == 0, 10, "NPROC 0 once stopped")
    wait_for(lambda: ioc.get(f"{S01}:RSS") == 0 and ioc.get(f"{S01}:CPU") == 0, 10, "no usage")


GROWING = """
import subprocess, sys, time
# The growth is in a child in its own session: the limit is on the whole tree.
subprocess.Popen(
    [sys.executable, "-c",
     "import time\\n"
     "chunks = []\\n"
     "while True:\\n"
     "    chunks.append(bytearray(10 * 2**20))\\n"
     "    for i in range(0, len(chunks[-1]), 4096): chunks[-1][i] = 1\\n"
     "    time.sleep(0.1)\\n"],
    start_new_session=True,
)
while True:
    time.sleep(1)
"""


@pytest.mark.parametrize("autorestart", ["On failure", "Off"])
def test_a_run_growing_past_memory_max_is_killed_as_a_failure(
    mechanism,
    make_ioc,
    config_dir,
    autorestart,
):
    write_script(config_dir, "background_script.py", GROWING)
    # A back-off long enough to read MSG in before the next run replaces it, under load too.
    backoff = SETTINGS.replace("backoff_initial = 0.5", "backoff_initial = 3.0")
    backoff = backoff.replace("backoff_max = 1.0", "backoff_max = 3.0")
    toml = backoff + f'memory_max = 100\nautorestart = "{autorestart}"\n'
    ioc = start(make_ioc, mechanism, toml)
    assert ioc.get(f"{S01}:MEMORY_MAX") == 100
    pid = wait_for(lambda: ioc.get(f"{S01}:PID"), 10, "a PID")
    expected = "BACKOFF" if autorestart == "On failure" else "EXITED"
    ioc.wait_status(expected, timeout=30)
    msg = caget_text(ioc, f"{S01}:MSG")
    assert msg.startswith("memory limit 100 MB exceeded (RSS ")
    rss = int(msg.split("(RSS ", 1)[1].split(" MB)", 1)[0])
    assert rss > 100
    assert ": killed by SIGKILL" in msg
    if autorestart == "On failure":
        assert msg.endswith("; restarting in 3 s")
    assert ioc.get(f"{S01}:EXIT_CODE") == -9
    assert process_gone(pid)
    run = run_of(ioc, pid)
    assert run == ("memory", -9)
    if autorestart == "On failure":
        # A failure for the restart policy: it comes back, and the start limit ends it.
        ioc.wait_status("FATAL", timeout=60)
        assert "memory limit 100 MB exceeded" in caget_text(ioc, f"{S01}:MSG")


def run_of(ioc: Ioc, pid: int) -> tuple[str, int] | None:
    db = sqlite3.connect(f"file:{Path(ioc.var_dir) / 'state.sqlite'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT cause, exit_code FROM runs WHERE pid = ?", (pid,)).fetchone()
    finally:
        db.close()
    return None if row is None else (str(row[0]), int(row[1]))


# ~60 MB touched once, then three forked workers that only sleep: the pages are
# shared copy-on-write, so the tree uses ~70 MB however many processes map them.
FORKED_WORKERS = """
import os, time
ballast = bytearray(60 * 2**20)
for i in range(0, len(ballast), 4096): ballast[i] = 1
for _ in range(3):
    if os.fork() == 0:
        while True:
            time.sleep(1)
while True:
    time.sleep(1)
"""


def test_memory_shared_by_forked_workers_is_counted_once(mechanism, make_ioc, config_dir):
    write_script(config_dir, "background_script.py", FORKED_WORKERS)
    ioc = start(make_ioc, mechanism, SETTINGS + "memory_max = 150\n")
    ioc.wait_status("RUNNING")
    # The figures of one sample that saw every worker: the limit was judged on them.
    wait_for(
        lambda: ioc.get(f"{S01}:NPROC") == 4 and (ioc.get(f"{S01}:RSS") or 0) >= 60,
        15,
        "NPROC 4 and the ballast in RSS",
    )
    assert ioc.get(f"{S01}:RSS") < 150
    assert ioc.status() == "RUNNING", caget_text(ioc, f"{S01}:MSG")
