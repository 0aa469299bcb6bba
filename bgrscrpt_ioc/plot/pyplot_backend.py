"""A matplotlib backend for scripts' pyplot figures: served live as a WebAgg page.

``matplotlib.use("module://bgrscrpt_ioc.plot.pyplot_backend")`` (or genie's
``genie_python.matplotlib_backend.ibex_websocket_backend``, which is this
module) and then plain pyplot: ``pyplot.show()`` starts a web server on the
plot port (IBEX's 8988 for the primary window, 8989 for the secondary one, as
``set_up_plot_default`` chooses; the next free port when taken), publishes its
address to the slot's ``PLOT_URL``, and pushes the current frame of every open
figure to the browsers watching. It never blocks: a script draws, calls
``show()`` again, and the page follows.

The page ``/`` shows every open figure (at most ``max_figures``, 3 as in
IBEX; a fourth closes the oldest), ``/<n>`` one figure, ``/plot.png`` the
newest figure as an image, ``/status.json`` the figures' titles.

Threads: pyplot is used from the script's threads while browsers are served
from the server's loop. Every render and every frame sent takes one lock, and
whatever is written to a websocket is handed to the server's loop.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import threading
from html import escape
from io import BytesIO
from pathlib import Path
from typing import Any

import matplotlib as mpl
import tornado.web
import tornado.websocket
from matplotlib import _api
from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import FigureManagerBase, _Backend
from matplotlib.backends import backend_webagg_core as core

from bgrscrpt_ioc.plot.server import PlotServer, first_plot_port

DEFAULT_HOST = "127.0.0.1"
PRIMARY_WEB_PORT = 8988
# IBEX's secondary plot port, where background plots go; BGRSCRPT_PLOT_PORT moves it
# (and with it where InstrumentScripts' plot looks for one already running).
SECONDARY_WEB_PORT = first_plot_port()
backend_version = "bgrscrpt_ioc"

max_number_of_figures = 3
figure_numbers: list[int] = []
_web_backend_port = PRIMARY_WEB_PORT
_is_primary = True

_lock = threading.RLock()  # renders and frames: from script threads and the server's loop
_server: PlotServer | None = None
_server_lock = threading.Lock()
_draw_pending: set[int | str] = set()


def set_up_plot_default(
    is_primary: bool = True,
    should_open_ibex_window_on_show: bool = True,
    max_figures: int | None = None,
) -> None:
    """Where ``show()`` serves: IBEX's primary (8988) or secondary (8989) plot port;
    ``max_figures`` open at once. ``should_open_ibex_window_on_show`` is accepted
    (IBEX's backend ignores it too)."""
    global _web_backend_port, _is_primary, max_number_of_figures
    _web_backend_port = PRIMARY_WEB_PORT if is_primary else SECONDARY_WEB_PORT
    _is_primary = is_primary
    if max_figures is not None:
        max_number_of_figures = max_figures


def plot_url() -> str:
    """The page's address, empty until ``show()`` has started the server."""
    return _server.url if _server is not None else ""


def ibex_open_plot_window(
    figures: list[int] | None = None, is_primary: bool = True, host: str | None = None
) -> None:
    """What IBEX's GUI is asked to open: here the page's address, to PLOT_URL and stdout."""
    url = plot_url()
    if not url:
        print("Failed to open plot: no figure is being served yet (call pyplot.show())")
        return
    _publish(url)
    print(f"plot window: {url}")


def _publish(url: str) -> None:
    from bgrscrpt_ioc import script

    script.notify(PLOT_URL=url)


def _ensure_server() -> PlotServer:
    global _server
    with _server_lock:
        if _server is None:
            # A daemon, as IBEX's: a script that ends is not kept alive by its figures.
            server = PlotServer(port=_web_backend_port, daemon=True).start()
            server.call(server.serve_app, _application())
            _server = server
            _publish(server.url)
            print(f"plots: {server.url}", flush=True)
        return _server


def _on_loop() -> bool:
    return _server is not None and threading.get_ident() == _server.thread_ident


MAX_UNACKED = 3  # frames a browser may have in flight; a slower one misses some


class FigureCanvas(core.FigureCanvasWebAggCore):
    """Renders under the backend's lock; ``draw_idle`` draws soon, on the server's loop.

    Every frame is a whole image (as IBEX's backend sends them), so that a browser
    too slow to take every frame can be sent only some: the next one it gets is
    complete.
    """

    manager_class = _api.classproperty(lambda cls: FigureManager)

    def get_diff_image(self) -> bytes | None:
        self._force_full = True
        return super().get_diff_image()

    def set_image_mode(self, mode: str) -> None:
        self._current_image_mode = "full"

    def draw(self) -> None:
        with _lock:
            super().draw()

    def print_figure(self, *args: Any, **kwargs: Any) -> Any:
        with _lock:
            return super().print_figure(*args, **kwargs)

    def draw_idle(self) -> None:
        # Coalesced: one render per figure however often the script asks.
        server, number = _server, self.manager.num if self.manager else None
        if server is None or number is None or number in _draw_pending:
            return
        _draw_pending.add(number)

        def draw() -> None:
            _draw_pending.discard(number)
            with contextlib.suppress(Exception):  # a frame that fails is skipped, as in IBEX
                self.draw()

        server.call_soon(draw)


class FigureManager(core.FigureManagerWebAgg):
    # matplotlib declares it None (for ipympl) and reads a subclass's toolbar class here.
    _toolbar2_class = core.NavigationToolbar2WebAgg  # type: ignore[assignment]

    def refresh_all(self) -> None:
        with _lock:
            super().refresh_all()


class _Socket(tornado.websocket.WebSocketHandler):
    supports_binary = True
    manager: FigureManager | None = None
    unacked = 0  # frames sent that the browser has not shown yet ("ack")

    def open(self, fignum: str) -> None:
        self.set_nodelay(True)
        self.manager = Gcf.figs.get(int(fignum))  # type: ignore[assignment]
        if self.manager is not None:
            self.manager.add_web_socket(self)

    def on_close(self) -> None:
        if self.manager is not None:
            self.manager.web_sockets.discard(self)

    def on_message(self, message: str | bytes) -> None:
        try:
            content = json.loads(message)
            kind = content.get("type")
        except (ValueError, AttributeError):  # garbage from a client: ignored
            return
        if kind == "ack":
            with _lock:
                self.unacked = max(0, self.unacked - 1)
        elif kind == "supports_binary":
            self.supports_binary = bool(content.get("value"))
        elif self.manager is not None:
            if kind in ("refresh", "draw"):  # asking for a frame (IBEX's GUI, every 2 s)
                with _lock:
                    self.unacked = 0
            with contextlib.suppress(Exception):  # a browser's request never ends the script
                self.manager.handle_json(content)

    # What FigureManagerWebAgg calls, from whichever thread drew: sent on the loop.
    def send_json(self, content: dict) -> None:
        self._send(json.dumps(content), False)

    def send_binary(self, blob: bytes) -> None:
        # Called under the backend's lock (refresh_all): a stalled browser is not sent
        # frame after frame to queue up in this process.
        if self.supports_binary and self.unacked < MAX_UNACKED:
            self.unacked += 1
            self._send(blob, True)

    def _send(self, message: Any, binary: bool) -> None:
        if _on_loop():
            self._write(message, binary)
        elif _server is not None:
            _server.call_soon(self._write, message, binary)

    def _write(self, message: Any, binary: bool) -> None:
        with contextlib.suppress(tornado.websocket.WebSocketClosedError):
            self.write_message(message, binary=binary)


PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>{title}</title>
    <link rel="stylesheet" href="/_static/css/page.css" type="text/css">
    <link rel="stylesheet" href="/_static/css/boilerplate.css" type="text/css">
    <link rel="stylesheet" href="/_static/css/fbm.css" type="text/css">
    <link rel="stylesheet" href="/_static/css/mpl.css" type="text/css">
    <script src="/_static/js/mpl_tornado.js"></script>
    <script src="/js/mpl.js"></script>
    <script>
      document.addEventListener("DOMContentLoaded", function () {{
        var ws = location.protocol === "https:" ? "wss://" : "ws://";
        {figures}.forEach(function (num) {{
          var websocket = new (mpl.get_websocket_type())(ws + location.host + "/" + num + "/ws");
          new mpl.figure(num, websocket, mpl_ondownload, document.getElementById("figure-" + num));
        }});
      }});
    </script>
  </head>
  <body>
    <div id="mpl-warnings" class="mpl-warnings"></div>
    {divs}
    <p style="margin: 10px; font: 12px sans-serif;"><a href="/plot.png">PNG snapshot</a></p>
  </body>
</html>
"""


def _title(number: int) -> str:
    manager = Gcf.figs.get(number)
    return manager.get_window_title() if manager is not None else f"Figure {number}"


class _Page(tornado.web.RequestHandler):
    def get(self, fignum: str | None = None) -> None:
        numbers = sorted(Gcf.figs) if not fignum else [int(fignum)]
        if fignum and int(fignum) not in Gcf.figs:
            raise tornado.web.HTTPError(404)
        divs = "\n".join(f'<div id="figure-{n}" style="margin: 10px 10px;"></div>' for n in numbers)
        title = ", ".join(_title(n) for n in numbers) or "No figure"
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.write(PAGE.format(title=escape(title), figures=json.dumps(numbers), divs=divs))


class _MplJs(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/javascript")
        self.write(FigureManager.get_javascript())


class _Download(tornado.web.RequestHandler):
    def get(self, fignum: str | None = None, fmt: str = "png") -> None:
        number = int(fignum) if fignum else (max(Gcf.figs) if Gcf.figs else None)
        manager = Gcf.figs.get(number) if number is not None else None
        if manager is None or fmt not in core.FigureCanvasWebAggCore.get_supported_filetypes():
            raise tornado.web.HTTPError(404)
        buffer = BytesIO()
        manager.canvas.figure.savefig(buffer, format=fmt)
        self.set_header("Content-Type", mimetypes.types_map.get("." + fmt, "binary"))
        self.set_header("Cache-Control", "no-store")
        self.write(buffer.getvalue())


class _Status(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        figures = [{"number": n, "title": _title(n)} for n in sorted(Gcf.figs)]
        self.write({"figures": figures, "clients": sum(len(m.web_sockets) for m in _managers())})


def _managers() -> list[FigureManager]:
    return [m for m in Gcf.get_all_fig_managers() if isinstance(m, FigureManager)]


def _application() -> tornado.web.Application:
    static = core.FigureManagerWebAgg.get_static_file_path()
    return tornado.web.Application(
        [
            (r"/", _Page),
            (r"/([0-9]+)", _Page),
            (r"/plot\.png", _Download),
            (r"/status\.json", _Status),
            (r"/([0-9]+)/ws", _Socket),
            (r"/([0-9]+)/download\.([a-z0-9.]+)", _Download),
            (r"/js/mpl\.js", _MplJs),
            (r"/_static/(.*)", tornado.web.StaticFileHandler, {"path": static}),
            (
                r"/_images/(.*)",
                tornado.web.StaticFileHandler,
                {"path": str(Path(mpl.get_data_path(), "images"))},
            ),
        ]
    )


def push_frames() -> None:
    """Render every open figure and send its frame to the browsers watching it."""
    for manager in _managers():
        with contextlib.suppress(Exception):  # as IBEX's: no frame rather than a dead script
            manager.canvas.draw()


@_Backend.export
class _BackendScripts(_Backend):
    FigureCanvas = FigureCanvas
    FigureManager = FigureManager

    @classmethod
    def new_figure_manager(cls, num: int | str, *args: Any, **kwargs: Any) -> FigureManagerBase:
        with _lock:
            # pyplot numbers every figure (a str given to figure() is its label).
            if isinstance(num, int):
                for number in list(figure_numbers):
                    if number not in Gcf.figs:
                        figure_numbers.remove(number)
                figure_numbers.append(num)
                if len(figure_numbers) > max_number_of_figures:
                    oldest = figure_numbers.pop(0)
                    Gcf.destroy(oldest)
                    print(
                        "There are too many figures so deleted the oldest figure, "
                        f"which was {oldest}."
                    )
            return super().new_figure_manager(num, *args, **kwargs)

    @classmethod
    def show(cls, *, block: bool | None = None) -> None:
        """Serve (once) and push the current frames; never blocks."""
        if not Gcf.get_all_fig_managers():
            return
        _ensure_server()
        push_frames()
