"""Browser tests: the real app on a local port, driven by a headless Chromium through Playwright.

A pytest plugin (``pytest_plugins = ["tests.browser"]``, or ``-p tests.browser``) with these fixtures:

``live_server``
    The app of the ``app`` fixture (same settings and database as the test, tables emptied after
    it), served by werkzeug on ``127.0.0.1`` and a free port in a background thread. It has ``url``
    (``http://127.0.0.1:<port>``, also the app's ``PUBLIC_BASE_URL``, so mailed links point at it)
    and ``app``. An exception the app raises while serving fails the test at teardown. Data a test
    writes itself must be committed before the browser can see it (and, on SQLite, before the
    server can write at all).
``browser``
    One headless Chromium per test session (per xdist worker), Debian's ``/usr/bin/chromium``.
``browser_context`` / ``page``
    A fresh context (1280x900, ``base_url`` set to the live server, so ``page.goto("/signup")``
    works) and a page in it, for each test. An uncaught JavaScript error fails the test; when a
    test fails, ``failure.png`` and ``console.log`` are saved in its output folder.
``output_dir``
    ``test-output/<test name>/`` at the repository root, emptied when the test starts.
``screenshot``
    ``screenshot(page, "name")`` saves ``name.png`` (full page) in the output folder.

Browser tests carry ``@pytest.mark.browser``.
"""

from __future__ import annotations

import re
import shutil
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, got_request_exception
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
VIEWPORT = {"width": 1280, "height": 900}
DEFAULT_TIMEOUT_MS = 10_000
OUTPUT_ROOT = "test-output"
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@dataclass
class LiveServer:
    """The app served over real HTTP for a browser; ``url`` has no trailing slash."""

    url: str
    app: Flask
    errors: list[BaseException] = field(default_factory=list)

    def at(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        return self.url + path


class _QuietRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler without the one-line-per-request log (errors are still logged)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Say nothing about requests that went well."""


def _not_ready(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"the live server has no app yet"]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_.") or "unnamed"


def _failed(node: pytest.Item) -> bool:
    reports = node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


@contextmanager
def serve(build: Callable[[str], Flask], name: str) -> Iterator[LiveServer]:
    """Serve the app that ``build(url)`` returns on a free local port, in a background thread.

    The port is bound first, so ``build`` knows the app's own URL. An exception the app raises
    while serving fails the test when the server stops.
    """
    server: BaseWSGIServer = make_server(
        "127.0.0.1", 0, _not_ready, threaded=True, request_handler=_QuietRequestHandler
    )
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        app = build(url)
    except BaseException:
        server.server_close()
        raise
    live = LiveServer(url=url, app=app)

    def record(_sender: Flask, exception: BaseException, **_extra: Any) -> None:
        live.errors.append(exception)

    got_request_exception.connect(record, app, weak=False)
    server.app = app
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
    )
    thread.start()
    try:
        yield live
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        got_request_exception.disconnect(record, app)
    if live.errors:
        details = "\n".join("".join(traceback.format_exception(e)) for e in live.errors)
        pytest.fail(f"{name} raised while serving the test's requests:\n{details}")


@pytest.fixture
def live_server(request: pytest.FixtureRequest, app_config: dict[str, Any]) -> Iterator[LiveServer]:
    """The test's app served on a free local port in a background thread."""

    def build(url: str) -> Flask:
        if not getattr(app_config, "made", False):  # else the app exists: its config is set below
            app_config["PUBLIC_BASE_URL"] = url
        app: Flask = request.getfixturevalue("app")
        app.config["PUBLIC_BASE_URL"] = url
        return app

    with serve(build, "the live server") as live:
        yield live


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """A headless Chromium shared by the browser tests of this process."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Browser tests need Chromium at {CHROMIUM}: install it with "
            "`apt-get install -y chromium` (Playwright cannot download its own browser here)."
        )
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
    except Exception as exc:
        playwright.stop()
        pytest.fail(
            f"Chromium at {CHROMIUM} would not start ({exc}); reinstall it with "
            "`apt-get install -y chromium`."
        )
    try:
        yield chromium
    finally:
        chromium.close()
        playwright.stop()


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """This test's folder for screenshots and logs: ``test-output/<test name>/``, emptied."""
    folder = request.config.rootpath / OUTPUT_ROOT / _safe_name(request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def save_screenshot(page: Page, folder: Path, name: str) -> Path:
    """Save a full-page screenshot of ``page`` as ``<folder>/<name>.png`` and return its path."""
    path = folder / (_safe_name(name) + ".png")
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def screenshot(output_dir: Path) -> Callable[[Page, str], Path]:
    """``screenshot(page, name)``: save ``name.png`` of ``page`` in the test's output folder."""
    return lambda page, name: save_screenshot(page, output_dir, name)


@pytest.fixture
def browser_context(browser: Browser, live_server: LiveServer) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies) pointed at the live server."""
    context = browser.new_context(base_url=live_server.url, viewport=VIEWPORT)  # type: ignore[arg-type]
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    context.set_default_navigation_timeout(DEFAULT_TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(
    request: pytest.FixtureRequest, browser_context: BrowserContext, output_dir: Path
) -> Iterator[Page]:
    """A page of its own for the test; uncaught JavaScript errors fail it."""
    tab = browser_context.new_page()
    console: list[str] = []
    page_errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        console.append(f"{message.type}: {message.text} ({message.location.get('url', '')})")

    tab.on("console", on_console)
    tab.on("pageerror", lambda error: page_errors.append(str(error)))
    yield tab
    if _failed(request.node) and not tab.is_closed():
        save_screenshot(tab, output_dir, "failure")
        (output_dir / "console.log").write_text("\n".join(console) + "\n", encoding="utf-8")
    tab.close()
    if page_errors:
        pytest.fail("JavaScript errors on the page:\n" + "\n".join(page_errors))
