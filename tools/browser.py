"""Headless Chromium for the frontend tests and the UI-workflow tool (Playwright, no downloads).

Playwright drives the system Chromium (Debian's /usr/bin/chromium, or TTM_CHROMIUM); it
never downloads a browser of its own.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

# The frontend is ready for a test once its graph, its first workflow and its websocket client id exist.
READY_JS = """() => window.app && app.graph && document.querySelector('#graph-canvas')
  && app.extensionManager?.workflow?.activeWorkflow && app.api?.clientId"""
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = os.environ.get("TTM_CHROMIUM", "/usr/bin/chromium")
    if not Path(path).exists():
        raise RuntimeError(f"no Chromium at {path}: run tools/setup_browser.sh (Debian: apt-get install chromium) "
                           "or set TTM_CHROMIUM")
    return path


@contextmanager
def comfy_page(url: str, timeout_ms: int = 60_000) -> Iterator[Page]:
    """A page with ComfyUI's frontend started: graph, first workflow and websocket ready (READY_JS)."""
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="ttm-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 2560, "height": 1440})
        try:
            page = context.new_page()
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            # window.app appears before the frontend has finished starting: it still loads the default
            # workflow (which would replace a graph loaded now) and opens the websocket afterwards.
            page.wait_for_function(READY_JS)
            yield page
        finally:
            context.close()
