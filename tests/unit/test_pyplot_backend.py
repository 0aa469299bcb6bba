"""The pyplot backend scripts' figures are served by (genie's ``ibex_websocket_backend``).

Run in a fresh interpreter, as a script runs: matplotlib's backend is process-wide.
A websocket client stands in for a browser: it gets whole frames, a client that
stops acknowledging is not sent more than a few, and garbage from it changes
nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from bgrscrpt_ioc.supervisor.env import compat_site_dir
from devsupport.ports import free_ca_port

SCENARIO = """
import asyncio, json, os, urllib.request
import matplotlib
matplotlib.use("module://genie_python.matplotlib_backend.ibex_websocket_backend")
from matplotlib import pyplot
from genie_python.matplotlib_backend import ibex_websocket_backend as backend
import tornado.websocket

out = {"plot_date": hasattr(pyplot, "plot_date")}
backend.set_up_plot_default(is_primary=False, should_open_ibex_window_on_show=False)
out["secondary"] = backend.SECONDARY_WEB_PORT
figure = pyplot.figure("Pressure")
pyplot.plot_date([738000.0, 738000.1], [1.0, 2.0], "-", label="p")
pyplot.show()
url = backend.plot_url()
out["url"] = url
out["status"] = json.loads(urllib.request.urlopen(url + "status.json").read())


async def client():
    ws = await tornado.websocket.websocket_connect(url.replace("http", "ws") + "1/ws")
    await ws.write_message(json.dumps({"type": "supports_binary", "value": True}))
    await ws.write_message("not json at all")  # garbage: ignored
    await ws.write_message(json.dumps({"type": "refresh"}))
    frames = []

    async def take(seconds):
        got = 0
        try:
            while True:
                message = await asyncio.wait_for(ws.read_message(), seconds)
                if isinstance(message, bytes):
                    frames.append(message)
                    got += 1
        except asyncio.TimeoutError:
            return got

    first = await take(1.0)  # the first frame(s), unacknowledged
    for _ in range(10):  # the script draws on; the silent client is not sent more
        pyplot.show()
    stalled = await take(1.0)
    await ws.write_message(json.dumps({"type": "ack"}))
    await ws.write_message(json.dumps({"type": "ack"}))
    resumed, deadline = 0, asyncio.get_running_loop().time() + 5
    while not resumed and asyncio.get_running_loop().time() < deadline:
        pyplot.show()  # until the server has read the acknowledgements
        resumed = await take(0.2)
    ws.close()
    return frames, first, stalled, resumed


frames, first, stalled, resumed = asyncio.run(client())
out["first"] = first
out["stalled"] = stalled
out["resumed"] = resumed
out["all_png"] = all(f.startswith(b"\\x89PNG") for f in frames)
for name in ("A", "B", "C"):
    pyplot.figure(name)
out["figures"] = sorted(pyplot.get_figlabels())
print(json.dumps(out), flush=True)
os._exit(0)
"""


def test_frames_whole_bounded_and_served(tmp_path):
    port = free_ca_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        PYTHONPATH=str(compat_site_dir()),
        BGRSCRPT_GENIE_PYTHON="kit",
        BGRSCRPT_PLOT_PORT=str(port),
        NOTIFY_SOCKET="",
    )
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCENARIO)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["plot_date"]  # restored for matplotlib >= 3.11
    assert result["secondary"] == port  # BGRSCRPT_PLOT_PORT moves IBEX's 8989
    assert result["url"] == f"http://127.0.0.1:{port}/"
    assert result["status"]["figures"] == [{"number": 1, "title": "Pressure"}]
    assert result["all_png"]  # every frame a whole image
    # Ten frames drawn for a client that acknowledges none: it is sent three in all.
    assert result["first"] >= 1
    assert result["first"] + result["stalled"] == 3
    assert result["resumed"] >= 1  # acknowledged: frames flow again
    # At most three figures, as IBEX's: the oldest went.
    assert result["figures"] == ["A", "B", "C"]
    assert "deleted the oldest figure, which was 1" in out.stdout
