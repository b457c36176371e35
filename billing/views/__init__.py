"""Blueprints: views parse input, call one service, render or serialise, and commit."""

from __future__ import annotations

from typing import Any

from flask import Flask
from werkzeug.routing import IntegerConverter, Map

ROW_ID_MAX = 2**31 - 1
"""The largest id a row can have (ids are PostgreSQL ``integer`` columns)."""


class RowIdConverter(IntegerConverter):
    """``<int:...>`` in the pages' routes: a row id, at most :data:`ROW_ID_MAX`. A larger number
    is no row's, so the route does not match (404) instead of reaching the database, where
    SQLite cannot even bind it."""

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", ROW_ID_MAX)
        super().__init__(url_map, *args, **kwargs)


def register(app: Flask) -> None:
    """Register every blueprint of the app; their ``<int:...>`` ids are row ids
    (:class:`RowIdConverter`)."""
    app.url_map.converters["int"] = RowIdConverter
    from billing.views import (
        access,
        account,
        auth,
        dev,
        groups,
        ops,
        payments,
        staff,
        staff_api_clients,  # noqa: F401 - adds its routes to staff.bp
        staff_audit,  # noqa: F401 - adds its routes to staff.bp
        staff_dashboard,  # noqa: F401 - adds its routes to staff.bp
        staff_groups,  # noqa: F401 - adds its routes to staff.bp
        staff_reports,  # noqa: F401 - adds its routes to staff.bp
        staff_support,  # noqa: F401 - adds its routes to staff.bp
        unavailable,
    )

    app.register_blueprint(ops.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(access.bp)
    app.register_blueprint(payments.bp)
    app.register_blueprint(groups.bp)
    app.register_blueprint(staff.bp)
    app.register_blueprint(unavailable.bp)
    if app.config["DEV_MODE"]:
        app.register_blueprint(dev.bp)


API_PREFIX = "/api/v1"


def mount_api(app: Flask) -> Flask:
    """Serve the content-site API as its own lean app under ``/api/v1``; return that app.

    The content site calls the entitlement check on every article view, so the API skips the
    browser machinery the pages need (sessions, log-in, CSRF, rate-limit hooks, CSP): it shares
    the main app's settings and extensions (database, clock, caches) and nothing else.
    """
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from billing import db, errors, inputs, ip_session_counter
    from billing.views import api

    api_app = Flask(__name__)
    api_app.config = app.config
    api_app.extensions = app.extensions
    # ``/readers//entitlement`` is not ``/readers/entitlement``: no redirect to another operation.
    api_app.url_map.merge_slashes = False
    inputs.init_app(api_app, json_api=True)
    api_app.register_blueprint(api.bp)
    api_app.teardown_appcontext(db.close_session)
    ip_session_counter.flush_after_responses(api_app)
    errors.init_app(api_app)
    app.extensions["api_app"] = api_app
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {API_PREFIX: api_app})  # type: ignore[method-assign]
    return api_app
