"""Blueprints: views parse input, call one service, render or serialise, and commit."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    """Register every blueprint of the app."""
    from billing.views import account, auth, dev, ops, staff

    app.register_blueprint(ops.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(staff.bp)
    if app.config["DEV_MODE"]:
        app.register_blueprint(dev.bp)
