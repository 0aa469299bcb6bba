"""A new-style background script (BGRSCRPT_02) using bgrscrpt_ioc.script.

It registers, feeds the watchdog every second (set BGRSCRPT_02:WATCHDOG to, say,
5 and the IOC restarts it should it ever hang) and puts a status line on MSG.
"""

import time

from bgrscrpt_ioc import script

script.register()
count = 0
while True:
    count += 1
    script.beat()
    if count % 10 == 0:
        script.status(f"alive, {count} beats")
        print(f"beat {count}", flush=True)
    time.sleep(1)
