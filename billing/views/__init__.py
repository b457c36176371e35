"""Blueprints: views parse input, call one service, render or serialise, and commit."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    """Register every blueprint of the app."""
    from billing.extensions import csrf
    from billing.views import (
        account,
        api,
        auth,
        dev,
        ops,
        staff,
        staff_api_clients,  # noqa: F401 - adds its routes to staff.bp
    )

    app.register_blueprint(ops.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(staff.bp)
    app.register_blueprint(api.bp)
    csrf.exempt(api.bp)
    if app.config["DEV_MODE"]:
        app.register_blueprint(dev.bp)
