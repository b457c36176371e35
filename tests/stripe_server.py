"""pytest plugin: a real localstripe server for the tests that talk to "Stripe".

Load it with ``pytest_plugins = ["tests.stripe_server"]`` (or ``-p tests.stripe_server``). Fixtures:

- ``localstripe_server`` (session): a :class:`LocalstripeServer` started for this test process,
  stopped at the end; ``localstripe_url`` (session) is its base URL.
- ``stripe_reset`` (function): empties the server's data (``DELETE /_config/data``) and switches off
  the webhooks earlier tests registered, then returns the :class:`LocalstripeServer`, whose helpers
  do what a browser or the bank would (save a card, pass or fail 3-D Secure). localstripe sends
  each webhook about a second after the call, to the endpoints registered at that moment: a test
  that registers one may still receive events of the test before it, about objects that no longer
  exist.
- ``gateway`` (function): a :class:`~billing.gateway.StripeGateway` for that emptied server.

**Parallel runs.** localstripe saves its whole store to the fixed file ``/tmp/localstripe.pickle``
on every write (even with ``--from-scratch``, which only skips loading it) and the path is not
configurable: several servers would overwrite one file that a development server started without
``--from-scratch`` then loads (test data, or a truncated pickle while another process writes it), and
a file left by another user makes every write fail. So each test process (each pytest-xdist worker)
starts its own server, on a free port of 127.0.0.1 only, through :mod:`billing.devstripe`, which
points the store at a file in the process's own pytest temporary directory and, with
``--from-scratch``, never loads one. Nothing is shared between processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import billing
from billing.gateway import StripeGateway

SECRET_KEY = "sk_test_localstripe"  # localstripe accepts any key starting with sk_
STARTUP_DEADLINE = 30.0
PROJECT_ROOT = Path(billing.__file__).resolve().parent.parent
"""The checkout whose ``billing`` the tests import: the server runs its ``billing.devstripe``."""


def _server_environment() -> dict[str, str]:
    """This environment with the tested checkout first on ``PYTHONPATH`` (the server starts in
    a directory of its own, where an installed copy of ``billing`` would be found instead)."""
    paths = [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalstripeError(RuntimeError):
    """localstripe did not start, or answered a helper's request with an error."""


class LocalstripeServer:
    """A localstripe process of this test session, with helpers for what tests do to it directly."""

    def __init__(self, workdir: Path) -> None:
        """Prepare a server whose store file and log live in ``workdir``; :meth:`start` runs it."""
        self.workdir = workdir
        self.store_path = workdir / "localstripe.pickle"
        self.log_path = workdir / "localstripe.log"
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._webhook_ids: set[str] = set()

    def start(self, attempts: int = 3) -> None:
        """Start the server on a free port and wait until it answers (retrying if the port was
        taken in between)."""
        for _ in range(attempts):
            port = _free_port()
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "billing.devstripe",
                        "--store",
                        str(self.store_path),
                        "--port",
                        str(port),
                        "--from-scratch",
                    ],
                    cwd=self.workdir,
                    env=_server_environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.url = f"http://127.0.0.1:{port}"
            if self._wait_until_answering():
                return
            self.stop()
        raise LocalstripeError(f"localstripe did not start; its log:\n{self._log_tail()}")

    def _wait_until_answering(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_DEADLINE
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/js.stripe.com/v3/", timeout=1) as answer:  # noqa: S310
                    if answer.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server process (politely, then by force)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    @contextmanager
    def stalled(self) -> Iterator[None]:
        """Freeze the server (SIGSTOP) for the block: it accepts connections and never answers,
        as a Stripe in trouble does; it carries on (SIGCONT) afterwards, whatever happens."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._process.send_signal(signal.SIGCONT)

    def request(self, method: str, path: str, fields: dict[str, Any] | None = None) -> Any:
        """Send one request to the server (form-encoded, nested fields as Stripe writes them) and
        return the decoded JSON answer, or None for an empty one."""
        body = None if fields is None else urllib.parse.urlencode(_flatten(fields)).encode()
        request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 of our own server
            f"{self.url}{path}",
            data=body,
            method=method,
            headers={"Authorization": f"Bearer {SECRET_KEY}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                raw = answer.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            exc.close()
            raise LocalstripeError(f"{method} {path}: HTTP {exc.code} {detail}") from None
        return json.loads(raw) if raw.strip() else None

    def reset(self) -> None:
        """Forget every object, and stop sending the webhooks registered so far."""
        self.request("DELETE", "/_config/data")
        for webhook_id in self._webhook_ids:
            request = urllib.request.Request(  # noqa: S310
                f"{self.url}/_config/webhooks/{webhook_id}",
                data=json.dumps(
                    {"url": "http://127.0.0.1:9/", "secret": "off", "events": []}
                ).encode(),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10):  # noqa: S310
                pass
        self._webhook_ids.clear()

    def register_webhook(self, url: str, secret: str, webhook_id: str = "tests") -> None:
        """Have the server send its (signed) webhooks to ``url``, until the next reset."""
        self.request("POST", f"/_config/webhooks/{webhook_id}", {"url": url, "secret": secret})
        self._webhook_ids.add(webhook_id)

    def renew(self, subscription_id: str) -> dict[str, Any]:
        """End the subscription's paid period now, as Stripe does at its end: the next period
        starts and is invoiced (charged, or sent), or the subscription ends if set to cancel."""
        answer = self.request("POST", f"/v1/test_helpers/subscriptions/{subscription_id}/renew", {})
        assert isinstance(answer, dict)
        return answer

    def create_card(self, number: str = "4242424242424242", *, exp_year: int = 2034) -> str:
        """Make a card PaymentMethod from raw card data (as the fake Stripe.js would); its id."""
        card = {"number": number, "exp_month": 12, "exp_year": exp_year, "cvc": "123"}
        created = self.request("POST", "/v1/payment_methods", {"type": "card", "card": card})
        return str(created["id"])

    def create_sepa_debit(self, iban: str) -> str:
        """Make a SEPA Direct Debit PaymentMethod for ``iban``; its id."""
        fields = {"type": "sepa_debit", "sepa_debit": {"iban": iban}}
        return str(self.request("POST", "/v1/payment_methods", fields)["id"])

    def confirm_setup_intent(self, setup_intent_id: str, payment_method_id: str) -> dict[str, Any]:
        """Confirm a SetupIntent with a payment method, as ``confirmCardSetup`` does."""
        path = f"/v1/setup_intents/{setup_intent_id}/confirm"
        confirmed: dict[str, Any] = self.request(
            "POST", path, {"payment_method": payment_method_id}
        )
        return confirmed

    def authenticate_payment_intent(
        self, payment_intent_id: str, client_secret: str, *, success: bool
    ) -> dict[str, Any]:
        """Pass or fail the 3-D Secure check of a payment, as the bank's page would."""
        path = f"/v1/payment_intents/{payment_intent_id}/_authenticate"
        fields = {"client_secret": client_secret, "success": "true" if success else "false"}
        authenticated: dict[str, Any] = self.request("POST", path, fields)
        return authenticated


def _flatten(fields: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in fields.items():
        name = f"{prefix}[{key}]" if prefix else key
        if isinstance(value, dict):
            pairs.extend(_flatten(value, name))
        else:
            pairs.append((name, str(value)))
    return pairs


@pytest.fixture(scope="session")
def localstripe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalstripeServer]:
    """A localstripe of this test process alone (own port, own store file), for the session."""
    server = LocalstripeServer(tmp_path_factory.mktemp("localstripe"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def localstripe_url(localstripe_server: LocalstripeServer) -> str:
    """Base URL of this session's localstripe, e.g. ``http://127.0.0.1:40123``."""
    return localstripe_server.url


@pytest.fixture
def stripe_reset(localstripe_server: LocalstripeServer) -> LocalstripeServer:
    """This session's localstripe, emptied of every object and registered webhook."""
    localstripe_server.reset()
    return localstripe_server


@pytest.fixture
def gateway(stripe_reset: LocalstripeServer) -> StripeGateway:
    """A gateway talking to this session's freshly emptied localstripe (no network retries)."""
    return StripeGateway.from_config(
        {
            "STRIPE_SECRET_KEY": SECRET_KEY,
            "STRIPE_API_BASE": stripe_reset.url,
            "STRIPE_MAX_NETWORK_RETRIES": 0,
        }
    )
