"""How gunicorn serves Tollgate: its limits, and its own errors in the service's error shape.

``gunicorn.conf.py`` at the repository root applies this (gunicorn reads that file when started
from the root, as ``gunicorn app:app``). Gunicorn answers a few malformed requests itself, before
the app sees them: a request line longer than :data:`LIMIT_REQUEST_LINE` (414), too many or too
large header fields (431), an unreadable request line or header (400). Its stock answer is an
HTML page; :func:`write_error` answers them as ``{"error": {"code", "message", "field"}}``, the
shape every other error has (the request is not parsed yet, so its path, page or API, is
unknown). The app's own limit, ``MAX_URL_LENGTH`` (8000 by default), lies below gunicorn's, so an
address that is merely too long gets the app's answer: JSON for the API, a page for the site.
"""

from __future__ import annotations

import json
import re
from typing import Any

from billing.errors import error_body

LIMIT_REQUEST_LINE = 8190
"""Gunicorn's largest bounded request line (0 would mean unlimited)."""


def write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Write gunicorn's own error answer to ``sock`` in the service's JSON error shape."""
    from gunicorn import util

    code = re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "bad_request"
    message = f"{reason}: {mesg}" if mesg else reason
    body = json.dumps(error_body(code, message)).encode("utf-8")
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install() -> None:
    """Make gunicorn write its own errors with :func:`write_error` (called by gunicorn.conf.py)."""
    from gunicorn import util

    util.write_error = write_error
