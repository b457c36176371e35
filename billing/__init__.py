"""Tollgate: subscription and paywall billing for a news publisher.

``create_app(config=None)`` builds the Flask app: settings from the environment (overridden by
``config``), the database, extensions, blueprints, error handlers and the ``flask billing`` CLI.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask, Response
from werkzeug.middleware.proxy_fix import ProxyFix

from billing import branding, db, errors, inputs
from billing import config as settings
from billing.clock import SystemClock
from billing.extensions import csrf, limiter, login_manager
from billing.gateway import StripeGateway
from billing.services.decision_cache import DecisionCache
from billing.services.token_keys import KeyWrapper


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Create and configure the Tollgate app; ``config`` overrides settings from the environment."""
    app = Flask(__name__, instance_path=str(settings.INSTANCE_DIR))
    app.config.update(settings.from_env())
    if config:
        app.config.update(config)
        if "SECRET_KEYS" in config:
            app.config["SECRET_KEY"] = app.config["SECRET_KEYS"][0]
    settings.check(app.config)
    if app.config["DATABASE_URL"].startswith("sqlite:///"):
        settings.INSTANCE_DIR.mkdir(exist_ok=True)

    app.extensions["clock"] = app.config.get("CLOCK") or SystemClock()

    db.init_app(app)
    app.extensions["decision_cache"] = DecisionCache(
        past_due_grace=timedelta(days=app.config["PAST_DUE_GRACE_DAYS"]),
        max_age=timedelta(seconds=app.config["DECISION_CACHE_MAX_AGE"]),
        poll_interval=app.config["DECISION_CACHE_POLL_INTERVAL"],
    )
    from billing import ip_session_counter

    ip_session_counter.init_app(app)
    _init_extensions(app)
    errors.init_app(app)
    inputs.init_app(app)
    app.extensions["token_key_wrapper"] = KeyWrapper(app.config["TOKEN_KEY_WRAPPING_SECRETS"])
    app.extensions["stripe_gateway"] = app.config.get(
        "STRIPE_GATEWAY"
    ) or StripeGateway.from_config(app.config)

    from billing.services import mail

    mail.init_app(app)
    branding.init_app(app)
    _register_blueprints(app)

    from billing import cli

    cli.init_app(app)
    if app.config.get("PROXY_FIX_X_FOR"):
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=int(app.config["PROXY_FIX_X_FOR"]))  # type: ignore[method-assign]
    security_headers = _security_headers_for(app)

    @app.after_request
    def _add_security_headers(response: Response) -> Response:
        for name, value in security_headers:
            response.headers.setdefault(name, value)
        return response

    return app


def _init_extensions(app: Flask) -> None:
    csrf.init_app(app)
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config.get("REDIS_URL") or "memory://")
    app.config.setdefault("RATELIMIT_ENABLED", True)
    limiter.init_app(app)
    # Every limit is a route decorator, and a decorated route checks its own limits. The global
    # hook would only evaluate default limits (we have none), yet costs every request a few
    # hundred microseconds: the content site's entitlement checks included.
    hooks = app.before_request_funcs.setdefault(None, [])
    hooks[:] = [hook for hook in hooks if hook != limiter._check_request_limit]
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message_category = "info"
    login_manager.session_protection = "strong"

    @login_manager.user_loader
    def _load_reader(session_token: str) -> Any:
        from billing.services import accounts

        return accounts.by_session_token(db.session(), session_token)


def _register_blueprints(app: Flask) -> None:
    from billing.views import mount_api, register

    register(app)
    mount_api(app)
    import webhooks

    webhooks.mount(app)


def _security_headers_for(app: Flask) -> list[tuple[str, str]]:
    """The headers every response carries (CSP, framing, sniffing, HSTS in production)."""
    stripe_origin = "/".join(app.config["STRIPE_JS_URL"].split("/")[:3])
    logo_origin = app.extensions["brand"].logo_origin
    images = f"'self' data: {logo_origin}" if logo_origin else "'self' data:"
    headers = [
        (
            "Content-Security-Policy",
            "default-src 'self'; "
            f"script-src 'self' {stripe_origin}; "
            f"frame-src 'self' {stripe_origin}; "
            f"connect-src 'self' {stripe_origin}; "
            f"img-src {images}; style-src 'self'; "
            "frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
        ),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "strict-origin-when-cross-origin"),
        ("X-Frame-Options", "DENY"),
    ]
    if app.config["TOLLGATE_ENV"] == "production":
        headers.append(("Strict-Transport-Security", "max-age=63072000; includeSubDomains"))
    return headers
