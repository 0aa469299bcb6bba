"""``python -m demo.screenshots``: the documentation's pictures, taken from a running demo.

- ``docs/status.png``: the status screen drawn as HTML from the same layout as
  the ``.bob``/``.opi`` files (:mod:`bgrscrpt_ioc.screens.html`), filled with the
  demo's live values, then photographed by headless Chromium;
- ``docs/demo_plot.png``: headless Chromium on BGRSCRPT_01's live plot page.

Run it in a second terminal while ``python -m demo`` runs, with the demo's
EPICS_CA_ADDR_LIST exported (the demo prints it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bgrscrpt_ioc.ctl.ca import CaError, Client
from bgrscrpt_ioc.screens.html import write_html
from bgrscrpt_ioc.screens.layout import build_screen

ROOT = Path(__file__).resolve().parent.parent


def live_values(client: Client, names: list[str]) -> dict[str, tuple[str, int, int | None]]:
    values: dict[str, tuple[str, int, int | None]] = {}
    for full in names:
        suffix = full[len(client.prefix) :]
        try:
            reading = client.read(suffix)
            index = client.index(suffix)
        except CaError:
            continue
        value = reading.value
        text = f"{value:g}" if isinstance(value, float) else str(value)
        values[full] = (text, reading.severity, index)
    return values


def chromium(url: str, out: Path, size: str, wait_ms: int) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("python -m demo.screenshots: error: Chromium is not installed")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={size}",
             f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    print(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.screenshots", description=__doc__)
    p.add_argument("--prefix", default=os.environ.get("MYPVPREFIX", "IN:DEMO:"))
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    p.add_argument("--watch", default="FLAKY_01")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with Client(args.prefix) as client:
        if not client.connected("BGRSCRPT:VERSION"):
            print("python -m demo.screenshots: error: no demo IOC answers", file=sys.stderr)
            return 1
        watches = [args.watch] if client.connected(f"BGRSCRPT:WATCH:{args.watch}:STATE") else []
        screen = build_screen(["BGRSCRPT_01", "BGRSCRPT_02"], watches, prefix=args.prefix)
        names = sorted({w.pv for w in screen.widgets if w.pv})
        html = write_html(screen, live_values(client, names))
        plot_url = client.value("BGRSCRPT_01:PLOT_URL")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp, "status.html")
        page.write_text(html, encoding="utf-8")
        size = f"{screen.width},{screen.height}"
        chromium(page.as_uri(), args.out / "status.png", size, 1000)
    if plot_url:
        # 20 s: on a busy machine the page draws late.
        chromium(plot_url, args.out / "demo_plot.png", "900,650", 20000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
