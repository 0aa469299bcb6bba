"""An IBEX background script, written exactly as on an instrument (BGRSCRPT_01).

It registers with the IOC the IBEX way and then does periodic housekeeping: every
10 s it reports how full the instrument's var disk is. Nothing in it knows about
bgrscrpt_ioc: it runs unchanged under IBEX's procServ as well.
"""

import os
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.environ["KIT_ROOT"], "ISIS", "inst_servers", "master"))
from server_common.helpers import register_ioc_start  # noqa: E402

register_ioc_start("BGRSCRPT_01")
print("housekeeping started", flush=True)

var_dir = os.environ.get("ICPVARDIR", ".")
while True:
    usage = shutil.disk_usage(var_dir)
    print(f"{time.strftime('%H:%M:%S')} {var_dir}: {usage.used / usage.total:.0%} used", flush=True)
    time.sleep(10)
