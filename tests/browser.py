"""Headless Chromium (the Debian ``chromium`` package) driven by Playwright, for tests.

Use the ``browser`` fixture (import it into a test module): a fresh Chromium
per test, tagged like every other process the test starts and closed before
the leak check. No browser is downloaded: Playwright drives the system one.
"""

from __future__ import annotations

import io
import os
import shutil

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str | None:
    explicit = os.environ.get("BGRSCRPT_CHROMIUM")
    if explicit:
        return explicit
    for path in CHROMIUM_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


@pytest.fixture
def browser(test_tag):
    """A headless Chromium (Playwright ``Browser``); skipped where none is installed."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium')")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            # As in a container: no sandbox, no GPU, shared memory on disk.
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def canvas_image(page):
    """The figure canvas of a matplotlib WebAgg page as a PIL RGB image."""
    from PIL import Image

    png = page.locator("canvas.mpl-canvas").screenshot()
    return Image.open(io.BytesIO(png)).convert("RGB")


def colour_pixels(image, rgb, tolerance=40) -> int:
    """How many pixels are within ``tolerance`` (per channel) of ``rgb``."""
    import numpy as np

    pixels = np.asarray(image, dtype=np.int16)
    return int((np.abs(pixels - np.array(rgb, dtype=np.int16)) <= tolerance).all(axis=2).sum())
