"""BGRSCRPT_01 of the demo instrument: a live plot of the temperature blocks.

Written as on an IBEX instrument: nothing here knows about bgrscrpt_ioc. The plot
is served as a web page (port 8989, or the next free one); the IOC shows its
address on BGRSCRPT_01:PLOT_URL.
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.environ["KIT_ROOT"], "ISIS", "inst_servers", "master"))
from server_common.helpers import register_ioc_start  # noqa: E402
from technique.muon.background_plot import BackgroundBlockPlot  # noqa: E402

plot = BackgroundBlockPlot(
    [("Temp_Sample", "Sample"), ("Temp_Stick", "Stick"), ("Temp_SP", "Setpoint")],
    "Temperature (K)",
    ioc_number=1,
    interval=0.5,
).start()
register_ioc_start("BGRSCRPT_01")

while True:
    time.sleep(60)
