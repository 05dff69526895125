"""Debian's Chromium through Playwright (``playwright install`` is never run), and the real
service served over loopback HTTP in a thread, for the browser tests."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
from flask import Flask
from playwright.sync_api import Browser, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

# Debian's Chromium; PLAYGROUND_CHROMIUM names another build of it (never a downloaded one).
CHROMIUM = Path(os.environ.get("PLAYGROUND_CHROMIUM", "/usr/bin/chromium"))


def skip_or_fail_without_chromium(reason: str) -> NoReturn:
    """Skip the calling test (fixture) for lack of Chromium, or fail it when ``CI`` is set."""
    reason = f"the browser tests need Debian's Chromium: {reason}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
    pytest.skip(reason)


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, driven by Playwright."""
    if not CHROMIUM.is_file():
        skip_or_fail_without_chromium(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        except PlaywrightError as exc:
            skip_or_fail_without_chromium(f"{CHROMIUM} did not start: {exc.message[:300]}")
        yield launched
        launched.close()


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access line per request on stderr."""


@contextmanager
def served(app: Flask) -> Iterator[str]:
    """``app`` on a loopback port (a werkzeug server in a thread); yields its base URL."""
    server: BaseWSGIServer = make_server(
        "127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
