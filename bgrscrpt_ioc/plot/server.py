"""The live view: one matplotlib WebAgg figure served by tornado on its own thread and loop.

WebAgg is not thread-safe: a frame written to a websocket from any thread but
the server's breaks tornado's iostream. So the server owns the figure: it is
made on the server's loop, and every change to it (new data, limits, a draw)
is run there, through :meth:`PlotServer.call` or :meth:`PlotServer.call_soon`
from other threads.

Routes: ``/`` the live page (what the IBEX GUI's plot window shows),
``/plot.png`` a snapshot for e-logs, ``/status.json`` what the plot holds
(samples, time span, run number, data file), and matplotlib's own ``/js/mpl.js``,
``/_static/…``, ``/_images/…``, ``/1/ws`` (the WebAgg protocol) and
``/1/download.<format>``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import json
import mimetypes
import os
import socket
import threading
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any, Protocol

import matplotlib as mpl
import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket
from matplotlib.backends import backend_webagg_core as core

FIRST_PORT = 8989  # IBEX's secondary plot port
PORT_TRIES = 100
FIGURE_ID = 1
MAX_UNACKED = 3
SNAPSHOT_PATH = "/plot.png"
STATUS_PATH = "/status.json"

_servers: list[PlotServer] = []
_servers_lock = threading.Lock()


class Served(Protocol):
    """What the server shows: a WebAgg figure manager, a title and PNG snapshots."""

    @property
    def manager(self) -> core.FigureManagerWebAgg: ...

    title: str

    def snapshot(self, fmt: str) -> bytes: ...

    def status(self) -> dict: ...


class Toolbar(core.NavigationToolbar2WebAgg):
    # A live monitor: the view follows the data, so only "download" is offered.
    toolitems = [item for item in core.NavigationToolbar2WebAgg.toolitems if item[0] == "Download"]


class FigureManager(core.FigureManagerWebAgg):
    # matplotlib declares it None (for ipympl) and reads a subclass's toolbar class here.
    _toolbar2_class = Toolbar  # type: ignore[assignment]
    ToolbarCls = Toolbar


PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>{title}</title>
    <link rel="stylesheet" href="_static/css/page.css" type="text/css">
    <link rel="stylesheet" href="_static/css/boilerplate.css" type="text/css">
    <link rel="stylesheet" href="_static/css/fbm.css" type="text/css">
    <link rel="stylesheet" href="_static/css/mpl.css" type="text/css">
    <script src="_static/js/mpl_tornado.js"></script>
    <script src="js/mpl.js"></script>
    <script>
      document.addEventListener("DOMContentLoaded", function () {{
        var ws = location.protocol === "https:" ? "wss://" : "ws://";
        var uri = ws + location.host + "/{fig_id}/ws";
        var websocket = new (mpl.get_websocket_type())(uri);
        window.plot = new mpl.figure({fig_id}, websocket, mpl_ondownload,
                                     document.getElementById("figure"));
      }});
    </script>
  </head>
  <body>
    <div id="mpl-warnings" class="mpl-warnings"></div>
    <div id="figure" style="margin: 10px 10px;"></div>
    <p style="margin: 10px; font: 12px sans-serif;"><a href="plot.png">PNG snapshot</a></p>
  </body>
</html>
"""


class _Page(tornado.web.RequestHandler):
    def initialize(self, served: Served):
        self.served = served

    def get(self):
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.write(PAGE.format(title=escape(self.served.title), fig_id=FIGURE_ID))


class _MplJs(tornado.web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "application/javascript")
        self.write(FigureManager.get_javascript())


class _Snapshot(tornado.web.RequestHandler):
    def initialize(self, served: Served):
        self.served = served

    def get(self, fmt: str = "png"):
        if fmt not in core.FigureCanvasWebAggCore.get_supported_filetypes():
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", mimetypes.types_map.get("." + fmt, "binary"))
        self.set_header("Cache-Control", "no-store")
        self.write(self.served.snapshot(fmt))


class _Status(tornado.web.RequestHandler):
    def initialize(self, served: Served):
        self.served = served

    def get(self):
        self.set_header("Cache-Control", "no-store")
        self.write(self.served.status())  # a dict: tornado sends it as JSON


class _FavIcon(tornado.web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "image/png")
        self.write(Path(mpl.get_data_path(), "images", "matplotlib.png").read_bytes())


class _WebSocket(tornado.websocket.WebSocketHandler):
    supports_binary = True
    unacked = 0  # frames sent that the browser has not yet shown ("ack")

    def initialize(self, served: Served):
        self.served = served

    def open(self):
        self.set_nodelay(True)
        self.served.manager.add_web_socket(self)

    def on_close(self):
        self.served.manager.web_sockets.discard(self)

    def on_message(self, message):
        content = json.loads(message)
        if content.get("type") == "ack":
            self.unacked = max(0, self.unacked - 1)
        elif content.get("type") == "supports_binary":
            self.supports_binary = bool(content.get("value"))
        else:
            self.served.manager.handle_json(content)

    # What FigureManagerWebAgg calls, always on this loop.
    def send_json(self, content):
        self.write_message(json.dumps(content))

    def send_binary(self, blob):
        if self.supports_binary:
            self.unacked += 1
            self.write_message(blob, binary=True)


class PlotServer:
    """A tornado server on its own thread and asyncio loop, on the first free port from ``port``.

    The thread is not a daemon unless ``daemon``: like IBEX's background plot, the
    process keeps serving after the script's last statement, until it is stopped.
    """

    def __init__(
        self, *, port: int | None = None, address: str | None = None, daemon: bool = False
    ):
        self.daemon = daemon
        self.first_port = port if port is not None else first_plot_port()
        self.address = address or os.environ.get("BGRSCRPT_PLOT_ADDRESS", "127.0.0.1")
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._sockets: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._http: tornado.httpserver.HTTPServer | None = None

    @property
    def url(self) -> str:
        host = self.address
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        return f"http://{host}:{self.port}/"

    @property
    def snapshot_url(self) -> str:
        return self.url.rstrip("/") + SNAPSHOT_PATH

    def start(self) -> PlotServer:
        """Bind the first free port and start the loop; returns once it runs."""
        self._sockets, self.port = _bind_first_free(self.address, self.first_port)
        self._thread = threading.Thread(
            target=self._run, name=f"plot-{self.port}", daemon=self.daemon
        )
        self._thread.start()
        self._ready.wait()
        with _servers_lock:
            _servers.append(self)
        return self

    def serve(self, served: Served) -> None:
        """Serve ``served`` (call on the loop, once its figure exists)."""
        kwargs = {"served": served}
        static = core.FigureManagerWebAgg.get_static_file_path()
        app = tornado.web.Application(
            [
                (r"/", _Page, kwargs),
                (SNAPSHOT_PATH, _Snapshot, kwargs),
                (STATUS_PATH, _Status, kwargs),
                (rf"/{FIGURE_ID}/download\.([a-z0-9.]+)", _Snapshot, kwargs),
                (rf"/{FIGURE_ID}/ws", _WebSocket, kwargs),
                (r"/js/mpl.js", _MplJs),
                (r"/favicon.ico", _FavIcon),
                (r"/_static/(.*)", tornado.web.StaticFileHandler, {"path": static}),
                (
                    r"/_images/(.*)",
                    tornado.web.StaticFileHandler,
                    {"path": str(Path(mpl.get_data_path(), "images"))},
                ),
            ]
        )
        self.serve_app(app)

    def serve_app(self, app: tornado.web.Application) -> None:
        """Serve ``app`` on the bound port (call on the loop)."""
        self._http = tornado.httpserver.HTTPServer(app)
        self._http.add_sockets(self._sockets)

    @property
    def thread_ident(self) -> int | None:
        """The server thread's ident (work on the figure must run there)."""
        return self._thread.ident if self._thread is not None else None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = 30.0) -> Any:
        """Run ``fn(*args)`` on the server's loop and return its result (from another thread)."""
        assert self.loop is not None

        async def run():
            return fn(*args)

        future: concurrent.futures.Future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return future.result(timeout)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Schedule ``fn(*args)`` on the server's loop (from any thread); do not wait."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        """Stop serving and end the thread."""
        if self.loop is None or self._thread is None:
            return

        def _close():
            if self._http is not None:
                self._http.stop()
            for sock in self._sockets:
                sock.close()
            assert self.loop is not None
            self.loop.stop()

        if self.loop.is_running():
            self.loop.call_soon_threadsafe(_close)
        self._thread.join(10)
        with _servers_lock:
            if self in _servers:
                _servers.remove(self)


def first_plot_port() -> int:
    """The first port a plot tries: ``$BGRSCRPT_PLOT_PORT``, else IBEX's 8989."""
    try:
        return int(os.environ.get("BGRSCRPT_PLOT_PORT", FIRST_PORT))
    except ValueError:
        return FIRST_PORT


def _bind_first_free(address: str, first: int) -> tuple[list[socket.socket], int]:
    """Listening sockets on the first port from ``first`` that is free (another slot may
    hold 8989: binding, not probing, makes two plots starting at once never share one)."""
    for port in range(first, first + PORT_TRIES):
        try:
            return tornado.netutil.bind_sockets(port, address), port
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
    raise OSError(errno.EADDRINUSE, f"no free port in {first}..{first + PORT_TRIES - 1}")


def wants_frame(sockets) -> bool:
    """Whether a browser keeps up: one that has not shown its last frames is not sent more."""
    return any(getattr(ws, "unacked", 0) < MAX_UNACKED for ws in sockets)


def servers() -> list[PlotServer]:
    """The plot servers this process runs."""
    with _servers_lock:
        return list(_servers)


def publish_current_url() -> str:
    """Send the newest plot's URL to the slot's PLOT_URL; returns it ('' when none)."""
    running = servers()
    if not running:
        return ""
    url = running[-1].url
    from bgrscrpt_ioc import script

    script.notify(PLOT_URL=url)
    return url
