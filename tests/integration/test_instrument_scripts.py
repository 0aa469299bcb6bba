"""Background scripts written as IBEX instruments write them, run by the IOC, watched
through libca (pyepics) and EPICS base's tools.

An instrument keeps its InstrumentScripts checkout on the script's path, so its
own ``technique.muon.background_plot`` and ``general.utilities`` are found before
the IOC's. The checkouts here are written by the tests: modules with the same
imports and calls as InstrumentScripts' (genie_python's DAE lookup, wrapper and
web backend, ``requests``, ``pyplot.plot_date``, enum blocks compared by name,
procServControl restarts), so that what the real modules need from the IOC's
environment is what these need.
"""

from __future__ import annotations

import json
import textwrap
import urllib.request
from pathlib import Path

import epics
import pytest

from devsupport.ports import free_ca_port
from tests.integration.conftest import write_script
from tests.integration.harness import wait_for
from tests.sim_instrument import Simulation

T = 30.0
_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# ---- an InstrumentScripts-shaped checkout --------------------------------------------

PLOT_MODULE = '''
"""A live plot of blocks, shaped as InstrumentScripts' technique.muon.background_plot."""
import os
import matplotlib
matplotlib.use("module://genie_python.matplotlib_backend.ibex_websocket_backend")
from datetime import datetime
from time import sleep

from genie_python.genie_dae import DAE_PVS_LOOKUP
from matplotlib import pyplot
from genie_python import genie as g
from genie_python.genie_cachannel_wrapper import (
    CaChannelWrapper, CaChannelException, UnableToConnectToPVException)
from genie_python.matplotlib_backend.ibex_websocket_backend import (
    set_up_plot_default, SECONDARY_WEB_PORT)
from requests import head, ConnectionError

SAVE_FILE = os.path.join(r"C:\\\\", "Instrument", "var", "tmp", "background_plot_data_{:02d}.csv")


class BackgroundBlockPlot:
    def __init__(self, blocks, label, ioc_number=1, interval=0.5):
        set_up_plot_default(is_primary=False, should_open_ibex_window_on_show=False)
        self.name = "{} Plot".format(label)
        self.interval = interval
        self.save_file = SAVE_FILE.format(ioc_number)  # IBEX's path: read when built
        self.pvs = [g.prefix_pv_name("CS:SB:" + block) for block, _ in blocks]
        self.labels = [name for _, name in blocks]
        self.run_state_pv = g.prefix_pv_name(DAE_PVS_LOOKUP["runstate"])

    def value(self, pv):
        try:
            data = CaChannelWrapper.get_pv_value(pv, timeout=self.interval / 4.0)
            sevr = CaChannelWrapper.get_pv_value(pv + ".SEVR", timeout=self.interval / 4.0)
            if sevr == "INVALID":
                data = None
        except (CaChannelException, UnableToConnectToPVException):
            data = None
        return data

    def start(self):
        try:
            head("http://localhost:{}".format(SECONDARY_WEB_PORT))
            print("Background Plot: new plot not started because it is already running")
            return
        except ConnectionError:
            pass
        figure = pyplot.figure(self.name)
        x, ys = [datetime.now()], [[self.value(pv)] for pv in self.pvs]
        lines = [pyplot.plot_date(x, y, "-", label=l)[0] for y, l in zip(ys, self.labels)]
        pyplot.legend()
        run = g.get_runnumber()
        with open(self.save_file, "w") as f:
            f.write("# run_number:{}\\n# Axes: time, {}\\n".format(run, ", ".join(self.labels)))
        pyplot.show()
        pyplot.ion()
        print("Background plot: Started")
        while True:
            point = [datetime.now()] + [self.value(pv) for pv in self.pvs]
            with open(self.save_file, "a") as f:
                f.write(",".join(str(v) for v in point) + "\\n")
            x.append(point[0])
            for y, v, line in zip(ys, point[1:], lines):
                y.append(v)
                line.set_data(x, [float("nan") if a is None else a for a in y])
            figure.gca().relim()
            figure.gca().autoscale_view()
            sleep(self.interval)
            pyplot.show()
'''

EMU_HELPER = '''
"""Shaped as InstrumentScripts' general.utilities.restart_ioc_when_pv_in_alarm."""
from genie_python import genie as g
from time import sleep
from threading import Thread, Event, current_thread


class StoppableThread(Thread):
    def __init__(self, *args, **kwargs):
        super(StoppableThread, self).__init__(*args, **kwargs)
        self._stop_event = Event()

    def _stopped(self):
        return self._stop_event.is_set()

    def stop(self):
        self._stop_event.set()


def restart_ioc_when_pv_in_alarm(block_to_monitor, iocs_to_restart, error_states,
                                 wait_between_restarts=120, wait_for_polling=10):
    a = StoppableThread(target=_poll, args=[block_to_monitor, error_states, iocs_to_restart,
                                            wait_between_restarts, wait_for_polling])
    a.setDaemon(True)
    a.start()
    return a


def _poll(block, error_states, iocs, wait_between_restarts, wait_for_polling):
    while not current_thread()._stopped():
        details = g.cget(block)
        if details["value"] in error_states:
            for ioc in iocs:
                print("Restarting {}".format(ioc))
                g.set_pv("CS:PS:{}:RESTART".format(ioc), 1, is_local=True)
            sleep(wait_between_restarts)
        sleep(wait_for_polling)
'''

# The opening every IBEX background script has, then the checkout on the path.
OPENING = """
import os, sys
from time import sleep
sys.path.insert(0, os.path.join(os.environ["KIT_ROOT"], "ISIS", "inst_servers", "master"))
from server_common.helpers import register_ioc_start
register_ioc_start("{slot}")
sys.path.insert(0, {checkout!r})
"""

PLOT_SCRIPT = """
from genie_python import genie as g
g.set_instrument(None)
import technique.muon.background_plot as plot
print("plot module:", plot.__file__, flush=True)
plot.BackgroundBlockPlot([("TEMP", "Sample"), ("TEMP_SP", "Setpoint")], "Temperature",
                         interval=0.2).start()
"""

# A script's own plot, subclassing the base class (the IOC's, no checkout).
USER_PLOT_SCRIPT = """
from datetime import datetime
from genie_python import genie as g
from technique.muon.background_plot import BackgroundPlot

g.set_instrument(None)


class SampleAndRun(BackgroundPlot):
    def get_data_point(self):
        # cget in any case, as on IBEX: the gateway serves the block in capitals too.
        return [datetime.now(), g.cget("Temp_sp")["value"], float(g.get_runnumber())]

    def get_data_set_labels(self):
        return ["temp", "run"]


SampleAndRun(interval=0.2, figure_name="Mine", ioc_number=2).start()
while True:
    sleep(10)
"""

# Shaped as InstrumentScripts' technique/muon/tektronix_osc_screenshots.py (BGRSCRPT_03).
SCREENSHOTS_SCRIPT = """
from datetime import datetime
import requests
from genie_python import genie as g

g.set_instrument(None)
DEVICE_IP = "127.0.0.1:9"  # nothing answers there

while True:
    try:
        run_number = g.get_runnumber()
        rb_number = g.get_rb()
        name = f'{rb_number}_{datetime.now().replace(microsecond=0).isoformat()}.png'
        print(f"NDXEMU{run_number} {name}", flush=True)
        requests.get(f"http://{DEVICE_IP}/image.png", timeout=1)
    except requests.ConnectionError:
        print("no oscilloscope", flush=True)
    except AttributeError as ae:
        print(ae, flush=True)
    sleep(0.5)
"""

EMU_SCRIPT = """
from genie_python import genie as g
from general.utilities.restart_ioc_when_pv_in_alarm import restart_ioc_when_pv_in_alarm
g.set_instrument(None)
import general.utilities.restart_ioc_when_pv_in_alarm as helper
print("helper module:", helper.__file__, flush=True)
thread = restart_ioc_when_pv_in_alarm("ZF_STATUS", ["BGRSCRPT_01"], ["FAULT"],
                                      wait_between_restarts=30, wait_for_polling=0.2)
while thread.is_alive():
    sleep(0.5)
"""


def checkout(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def script(slot: str, where: Path, body: str) -> str:
    return OPENING.format(slot=slot, checkout=str(where)) + textwrap.dedent(body)


def fetch(url: str) -> bytes:
    with _no_proxy.open(url, timeout=10) as response:
        return response.read()


def log(ioc, slot: str) -> str:
    return ioc.get(f"{slot}:LOG", as_string=True, count=5120) or ""


@pytest.fixture
def sim(port_pool, prefix, test_tag):
    made: list[Simulation] = []

    def start(**kw) -> Simulation:
        made.append(Simulation(prefix, port_pool.take(), **kw).start())
        return made[-1]

    yield start
    for s in made:
        s.stop()


def test_instrument_scripts_modules_found_first_and_the_iocs_own(
    make_ioc, config_dir, sim, tmp_path
):
    instrument = sim(blocks=["TEMP", "TEMP_SP"], moving=True)
    repo = checkout(
        tmp_path / "InstrumentScripts",
        {
            "technique/__init__.py": "",
            "technique/muon/__init__.py": "",
            "technique/muon/background_plot.py": PLOT_MODULE,
        },
    )
    write_script(config_dir, "background_script.py", script("BGRSCRPT_01", repo, PLOT_SCRIPT))
    no_checkout = tmp_path / "elsewhere"
    write_script(
        config_dir,
        "background_script3.py",
        script("BGRSCRPT_03", no_checkout, SCREENSHOTS_SCRIPT),
    )
    # Where background plots go (IBEX's 8989) and where the checkout's plot looks for one.
    plot_port = free_ca_port()
    ioc = make_ioc(slots=3, env={"BGRSCRPT_PLOT_PORT": str(plot_port)}).start()

    # The checkout's module, not the IOC's, with the IOC's genie_python and web backend.
    wait_for(lambda: "Background plot: Started" in log(ioc, "BGRSCRPT_01"), T, "the plot")
    assert f"plot module: {repo}/technique/muon/background_plot.py" in log(ioc, "BGRSCRPT_01")
    url = wait_for(lambda: ioc.get("BGRSCRPT_01:PLOT_URL", as_string=True), T, "PLOT_URL")
    assert url == f"http://127.0.0.1:{plot_port}/"
    assert json.loads(fetch(url + "status.json"))["figures"][0]["title"] == "Temperature Plot"
    assert fetch(url + "plot.png").startswith(b"\x89PNG")
    assert b"Temperature Plot" in fetch(url)
    # The block's .SEVR reads as "INVALID": the point is a gap (None), as on IBEX.
    # IBEX's C:\Instrument\var\tmp path becomes $ICPVARDIR/tmp off Windows.
    data = tmp_path / "var" / "tmp" / "background_plot_data_01.csv"
    wait_for(lambda: data.exists() and data.read_text().count("\n") > 5, T, "points saved")
    assert data.read_text().startswith("# run_number:00001000\n")
    epics.caput(instrument.pv("CS:SB:TEMP:SIM:SEVR"), 3, wait=True)
    wait_for(lambda: ",None," in data.read_text(), T, "a gap for the INVALID block")
    assert ioc.status("BGRSCRPT_01") == "RUNNING"

    # A script's own BackgroundPlot subclass, started once the first plot serves (two
    # plots starting together race for the port, and IBEX's plot gives way): served
    # too, on the next port.
    write_script(
        config_dir, "background_script2.py", script("BGRSCRPT_02", no_checkout, USER_PLOT_SCRIPT)
    )
    ioc.put("BGRSCRPT_02:START", 1)
    wait_for(lambda: "Background plot: Started" in log(ioc, "BGRSCRPT_02"), T, "own plot")
    url2 = wait_for(lambda: ioc.get("BGRSCRPT_02:PLOT_URL", as_string=True), T, "PLOT_URL 2")
    assert url2 != url and url2.startswith("http://127.0.0.1:")
    assert json.loads(fetch(url2 + "status.json"))["figures"][0]["title"] == "Mine"
    own = tmp_path / "var" / "tmp" / "background_plot_data_02.csv"
    wait_for(lambda: own.exists() and own.read_text().count("\n") >= 3, T, "own points")
    assert own.read_text().splitlines()[-1].endswith(",1000.0")

    # The oscilloscope script: get_rb and get_runnumber answer; requests is there.
    wait_for(lambda: "no oscilloscope" in log(ioc, "BGRSCRPT_03"), T, "the screenshots loop")
    assert "NDXEMU00001000 1920001_" in log(ioc, "BGRSCRPT_03")
    assert "has no attribute" not in log(ioc, "BGRSCRPT_03")
    for slot in ("BGRSCRPT_01", "BGRSCRPT_02", "BGRSCRPT_03"):
        assert "Traceback" not in log(ioc, slot), log(ioc, slot)


def test_emu_helper_from_a_checkout_restarts_through_procservcontrol(
    make_ioc, config_dir, sim, tmp_path
):
    instrument = sim(blocks=[], enum_blocks=["ZF_STATUS"], moving=False)
    repo = checkout(
        tmp_path / "InstrumentScripts",
        {
            "general/__init__.py": "",
            "general/utilities/__init__.py": "",
            "general/utilities/restart_ioc_when_pv_in_alarm.py": EMU_HELPER,
        },
    )
    write_script(config_dir, "background_script.py", "import time\nwhile True: time.sleep(1)\n")
    write_script(config_dir, "background_script2.py", script("BGRSCRPT_02", repo, EMU_SCRIPT))
    ioc = make_ioc(slots=2, args=["--procserv-control"]).start()
    ioc.wait_status("RUNNING", "BGRSCRPT_02")
    wait_for(lambda: "helper module:" in log(ioc, "BGRSCRPT_02"), T, "the helper to start")
    assert f"{repo}/general/utilities" in log(ioc, "BGRSCRPT_02")
    assert ioc.get("BGRSCRPT_01:START_CNT") == 1
    # The enum block goes to FAULT: cget gives "FAULT", in error_states, so the helper
    # puts CS:PS:BGRSCRPT_01:RESTART 1, which restarts slot 01.
    epics.caput(instrument.pv("CS:SB:ZF_STATUS"), "FAULT", wait=True)
    wait_for(lambda: ioc.get("BGRSCRPT_01:START_CNT") == 2, T, "the restart of BGRSCRPT_01")
    assert "Restarting BGRSCRPT_01" in log(ioc, "BGRSCRPT_02")
    ioc.wait_status("RUNNING", "BGRSCRPT_01")
    assert "Traceback" not in log(ioc, "BGRSCRPT_02"), log(ioc, "BGRSCRPT_02")
    assert not list(config_dir.glob("C:*"))  # nothing written to a Windows path here
