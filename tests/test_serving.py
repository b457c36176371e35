"""Served by gunicorn with the repository's gunicorn.conf.py, over-long addresses keep the shape.

Gunicorn answers a request line longer than its limit itself, before the app sees it; the app
answers a merely long address with its own 414. Both are checked on a real gunicorn, over a
real socket.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_SECRET

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def gunicorn(database_url: str) -> Iterator[int]:
    """Tollgate under gunicorn (one sync worker, the repository's config) on a free port."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SECRET_KEYS": TEST_SECRET,
        "TOLLGATE_ENV": "development",
    }
    process = subprocess.Popen(
        [GUNICORN, "--workers", "1", "--bind", f"127.0.0.1:{port}", "app:app"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)  # a real process starting, not a clock
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


def _get(port: int, path: str) -> tuple[int, str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


def test_a_request_line_over_gunicorns_limit_is_a_414_in_the_json_error_shape(
    gunicorn: int,
) -> None:
    status, content_type, body = _get(gunicorn, "/api/v1/readers?email=" + "a" * 9000)

    assert status == 414
    assert content_type == "application/json"
    assert json.loads(body)["error"]["code"] == "uri_too_long"  # the same code the app gives


def test_an_api_address_over_the_apps_limit_is_the_apps_414_in_the_json_error_shape(
    gunicorn: int,
) -> None:
    status, content_type, body = _get(gunicorn, "/api/v1/readers?email=" + "a" * 8100)

    assert status == 414
    assert content_type == "application/json"
    assert json.loads(body)["error"] == {
        "code": "uri_too_long",
        "message": "The address is longer than 8000 characters.",
        "field": None,
    }


def test_a_page_address_over_the_apps_limit_is_a_414_page(gunicorn: int) -> None:
    status, content_type, body = _get(gunicorn, "/login?next=/" + "a" * 8100)

    assert status == 414
    assert content_type.startswith("text/html")
    assert 'class="site-header"' in body
