"""Headless Chromium for the frontend tests and the UI-workflow tool (Playwright, no downloads).

Playwright drives the system Chromium (Debian's /usr/bin/chromium, or TTM_CHROMIUM); it
never downloads a browser of its own.

Everything here works on both frontends the tests run: ComfyUI 0.3.75's own (1.32.9, PrimeVue
dialogs and toasts) and the newest (1.58.1, served with --front-end-root; reka-ui dialogs and
toasts). Dialogs and toasts are therefore read by their ARIA roles, which both set, never by a
component library's class names.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

# The frontend is ready for a test once its graph, its first workflow and its websocket client id exist
# (the same names on 1.32.9 and 1.58.1).
READY_JS = """() => window.app && app.graph && document.querySelector('#graph-canvas')
  && app.extensionManager?.workflow?.activeWorkflow && app.api?.clientId"""
# The text of every dialog and toast on screen, by ARIA role: 1.32.9 (PrimeVue) gives its dialogs role
# dialog and its toast messages role alert; 1.58.1 (reka-ui) uses dialog / alertdialog, status for its
# workflow warnings (missing nodes, models) and alert for toasts. Only the outermost element of a nest
# counts, and elements of at most 1 px are skipped: 1.58.1 repeats each toast in a screen-reader-only
# live region.
DIALOGS_JS = """() => {
  const found = [...document.querySelectorAll('[role=dialog],[role=alertdialog],[role=status],[role=alert]')];
  const texts = [];
  for (const el of found) {
    if (found.some((other) => other !== el && other.contains(el))) continue;
    const box = el.getBoundingClientRect();
    if (box.width <= 1 || box.height <= 1) continue;
    const text = el.innerText.trim();
    if (text && !texts.includes(text)) texts.push(text);
  }
  return texts;
}"""
# What 1.58.1 says about model files the server lacks ("X.safetensors is missing", "N model files are
# missing", "Missing models"); 1.32.9 does not check model names at load.
_MISSING_MODELS = re.compile(r"missing (a required )?models?( files?)?|models?( files?)? (are|is) missing"
                             r"|\S+\.(safetensors|sft|ckpt|pt|pth|bin|gguf) is missing", re.IGNORECASE)
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = os.environ.get("TTM_CHROMIUM", "/usr/bin/chromium")
    if not Path(path).exists():
        raise RuntimeError(f"no Chromium at {path}: run tools/setup_browser.sh (Debian: apt-get install chromium) "
                           "or set TTM_CHROMIUM")
    return path


def dialogs(page: Page) -> list[str]:
    """The text of each dialog and toast the page shows now (DIALOGS_JS)."""
    return page.evaluate(DIALOGS_JS)


def problem_dialogs(texts: list[str]) -> list[str]:
    """The dialogs and toasts among ``texts`` that report missing nodes, inputs or media, or an invalid workflow.

    Missing model files are not a problem of the workflow: the tests load workflows naming the real weights
    on servers holding tiny ones (swapped in before queueing), and 1.58.1 warns about those names.
    A 1.58.1 summary of several issues ("3 issues found") names none of them; a missing node among
    them still shows as an unregistered node type.
    """
    return [text for text in texts if re.search(r"missing|invalid", _MISSING_MODELS.sub("", text), re.IGNORECASE)]


def frontend_version(page: Page) -> str:
    """The version the page's frontend reports (both 1.32.9 and 1.58.1 set it)."""
    return page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")


def redraw(page: Page) -> None:
    """Mark the canvas dirty and wait until LiteGraph has drawn it again (its frame counter moved)."""
    frame = page.evaluate("() => { app.canvas.setDirty(true, true); return app.canvas.frame; }")
    page.wait_for_function("(frame) => app.canvas.frame > frame", arg=frame)


def fit_view(page: Page) -> None:
    """Fit the whole graph on screen (the frontend's own command) and wait for the canvas to show it."""
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    redraw(page)


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
