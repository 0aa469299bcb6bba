"""BGRSCRPT_02 of the demo instrument: housekeeping, in the IBEX style.

Every 10 s: note the run, the sample temperature and how full the var disk is,
and clear plot snapshots older than a day from $ICPVARDIR/tmp. It feeds the
watchdog (WATCHDOG is 30 s in the demo's settings) so that, were it to hang,
the IOC would restart it.
"""

import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.environ["KIT_ROOT"], "ISIS", "inst_servers", "master"))
from genie_python import genie as g  # noqa: E402
from server_common.helpers import register_ioc_start  # noqa: E402

from bgrscrpt_ioc import script  # noqa: E402

g.set_instrument(None)
register_ioc_start("BGRSCRPT_02")
var_dir = Path(os.environ.get("ICPVARDIR", "."))
KEEP_SECONDS = 86400

while True:
    usage = shutil.disk_usage(var_dir)
    sample = g.cget("Temp_Sample")
    run = f"run {g.get_runnumber()} {g.get_runstate()}"
    cleared = 0
    for old in (var_dir / "tmp").glob("*.png"):
        if time.time() - old.stat().st_mtime > KEEP_SECONDS:
            old.unlink(missing_ok=True)
            cleared += 1
    line = (
        f"{run}, Temp_Sample {sample['value']:.2f} {sample['unit'] or 'K'}, "
        f"var {usage.used / usage.total:.0%} used, {cleared} old snapshots cleared"
    )
    print(time.strftime("%H:%M:%S"), line, flush=True)
    script.status(line)
    script.beat()
    time.sleep(10)
