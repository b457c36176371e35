"""Health, readiness, metrics, security headers and the error shape."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from billing import create_app
from billing.clock import FixedClock
from billing.config import DEV_WEBHOOK_SECRET as TEST_WEBHOOK_SECRET
from billing.config import from_env
from billing.services import api_clients
from billing.worker import Worker
from tests import factories
from webhooks.verify import sign


def test_healthz_says_the_process_is_up(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_checks_the_database(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["database"] == "ok"


def test_readyz_answers_503_when_the_database_is_unreachable(app_config: dict[str, Any]) -> None:
    broken = create_app({**app_config, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    response = broken.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["database"] == "unreachable"
    broken.extensions["db_engine"].dispose()


def test_healthz_answers_without_touching_the_database(app_config: dict[str, Any]) -> None:
    broken = create_app({**app_config, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert broken.test_client().get("/healthz").get_json() == {"status": "ok"}
    broken.extensions["db_engine"].dispose()


def test_readyz_gives_up_on_a_database_that_accepts_and_never_answers(
    app_config: dict[str, Any],
) -> None:
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)  # connections are accepted by the kernel, and never answered
        port = black_hole.getsockname()[1]
        stalled = create_app(
            {
                **app_config,
                "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{port}/none",
                "READYZ_TIMEOUT": 1,
            }
        )
        started = time.monotonic()
        response = stalled.test_client().get("/readyz")
        waited = time.monotonic() - started
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "database": "unreachable"}
    assert waited < 10, f"libpq's 2 s minimum, not the kernel's minutes: waited {waited:.1f} s"
    stalled.extensions["db_engine"].dispose()


def test_metrics_are_exposed_for_prometheus(client: FlaskClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "python_info" in response.get_data(as_text=True)


def test_every_page_carries_the_security_headers(client: FlaskClient) -> None:
    headers = client.get("/login").headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "Strict-Transport-Security" not in headers


def test_production_adds_hsts_and_secure_cookies() -> None:
    production = from_env(
        {
            "TOLLGATE_ENV": "production",
            "SECRET_KEYS": "p" * 40,
            "TOKEN_KEY_WRAPPING_SECRETS": "w" * 40,
            "DATABASE_URL": "postgresql://db.internal/tollgate",
            "STRIPE_SECRET_KEY": "sk_live_x",
            "STRIPE_WEBHOOK_SECRETS": "whsec_live",
            "PUBLISHER_COUNTRY": "DE",
            "PUBLISHER_VAT_ID": "DE136695976",
        }
    )
    app = create_app(production)  # /healthz needs no database, so none is reachable here
    response = app.test_client().get("/healthz")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert "dev.outbox" not in app.view_functions
    app.extensions["db_engine"].dispose()


def test_an_unknown_api_path_answers_json_in_the_one_error_shape(client: FlaskClient) -> None:
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert set(response.get_json()["error"]) == {"code", "message", "field"}


def test_an_unknown_page_answers_html(client: FlaskClient) -> None:
    response = client.get("/nothing-here", headers={"Accept": "text/html"})
    assert response.status_code == 404
    assert "<h1>Page not found</h1>" in response.get_data(as_text=True)


def _counter(client: FlaskClient, sample: str) -> float:
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_count_the_stripe_deliveries_and_the_workers_attempts(
    app: Flask, client: FlaskClient, clock: FixedClock
) -> None:
    stored = 'tollgate_webhook_deliveries_total{outcome="stored"}'
    duplicate = 'tollgate_webhook_deliveries_total{outcome="duplicate"}'
    ignored = 'tollgate_webhook_events_total{outcome="ignored",type="tollgate.test.metrics"}'
    before = {sample: _counter(client, sample) for sample in (stored, duplicate, ignored)}
    event = json.dumps(
        {
            "id": "evt_metrics",
            "type": "tollgate.test.metrics",
            "created": int(clock.now().timestamp()),
            "data": {"object": {}},
        }
    ).encode()
    header = sign(event, TEST_WEBHOOK_SECRET, int(clock.now().timestamp()))
    for _ in range(2):
        client.post("/webhooks/stripe", data=event, headers={"Stripe-Signature": header})
    assert _counter(client, stored) == before[stored] + 1
    assert _counter(client, duplicate) == before[duplicate] + 1
    assert _counter(client, 'tollgate_webhook_events_backlog{status="received"}') == 1
    Worker(app).run_once()
    assert _counter(client, ignored) == before[ignored] + 1
    assert _counter(client, 'tollgate_webhook_events_backlog{status="received"}') == 0


def test_metrics_count_the_api_decisions_by_reason(client: FlaskClient, session: Session) -> None:
    grant = factories.GrantFactory()
    _client, key, _token_key = api_clients.create(
        session,
        name="metrics",
        scopes=[api_clients.SCOPE_ENTITLEMENTS_READ],
        allowed_origins=[],
        created_by=None,
        now=factories.NOW,
    )
    session.commit()
    sample = 'tollgate_entitlement_decisions_total{reason="complimentary"}'
    before = _counter(client, sample)
    response = client.get(
        f"/api/v1/readers/{grant.reader.public_id}/entitlement",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.get_json()["reason"] == "complimentary"
    assert _counter(client, sample) == before + 1
