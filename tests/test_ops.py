"""Health, readiness, metrics, security headers and the error shape."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from billing import create_app
from billing.config import from_env


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
            "DATABASE_URL": "postgresql://db.internal/tollgate",
            "STRIPE_SECRET_KEY": "sk_live_x",
            "STRIPE_WEBHOOK_SECRETS": "whsec_live",
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
    assert "<h1>Not found</h1>" in response.get_data(as_text=True)
