"""Fixtures of the real-browser tests: the system Chromium through playwright, a blocked-off page.

See ``browser_tools`` for the rules: the system ``/usr/bin/chromium`` (never a downloaded
browser), skips outside CI and failures in CI when something is missing, and no request
leaves the machine.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from browser_tools import CHROMIUM, CHROMIUM_ARGS, PageLog, is_local, require


@pytest.fixture(scope="session")
def browser():
    """A headless system Chromium driven by playwright (sync API)."""
    require("playwright", importlib.util.find_spec("playwright") is not None)
    require("chromium", Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK))
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        pw.stop()


@pytest.fixture
def page(browser):
    """A fresh page (own context) with the outside network blocked; yields ``(page, log)``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    log = PageLog()

    def block(route):
        log.external.append(route.request.url)
        route.fulfill(status=200, body="", content_type="text/css")

    context.route(lambda url: not is_local(url), block)
    pg = context.new_page()
    pg.on("console", lambda m: log.console_errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: log.page_errors.append(str(e)))
    try:
        yield pg, log
    finally:
        context.close()
