"""Helpers for tests that are not fixtures: logging in, a hand-moved clock, stand-in servers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from flask.testing import FlaskClient
from flask_login.config import SESSION_KEYS

from billing.models import Reader


def login(client: FlaskClient, reader: Reader) -> None:
    """Log ``reader`` in on ``client`` by writing the Flask-Login session, without the login form.

    Flask-Login keeps the user id (our ``session_token``) in ``_user_id`` and ``_fresh``; the app
    uses strong session protection, which logs a session out unless ``_id`` matches the hash of the
    requesting client's address and user agent, so that is set from the client's own environ.
    """
    app = client.application
    with app.test_request_context(environ_base=client.environ_base):
        identifier = app.login_manager._session_identifier_generator()  # type: ignore[attr-defined]
    with client.session_transaction() as session:
        session["_user_id"] = reader.get_id()
        session["_fresh"] = True
        session["_id"] = identifier


def logout(client: FlaskClient) -> None:
    """Forget the login session of ``client``."""
    with client.session_transaction() as session:
        for key in SESSION_KEYS:
            session.pop(key, None)


class FakeMonotonic:
    """A monotonic clock (for caches' time-to-live) that the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.value = start

    def __call__(self) -> float:
        return self.value


class StandInHandler(BaseHTTPRequestHandler):
    """The request handler of a stand-in service: answers JSON with :meth:`send_json`, logs
    nothing."""

    def send_json(self, payload: Any) -> None:
        """Answer 200 with ``payload`` as JSON."""
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` from a thread on a free port of 127.0.0.1 while the block runs; yields
    the server's base URL (a stand-in for a service the app calls, such as VIES)."""
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
