"""Operations endpoints: liveness, readiness, Prometheus metrics, and the home page."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, redirect, url_for
from flask_login import current_user
from sqlalchemy.exc import SQLAlchemyError

from billing import db
from billing.metrics import exposition

bp = Blueprint("ops", __name__)


@bp.get("/")
def home() -> Response:
    """Send readers to their account, everyone else to sign up."""
    target = "account.overview" if current_user.is_authenticated else "auth.signup"
    return redirect(url_for(target))  # type: ignore[return-value]


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up (liveness): touches neither the database nor Stripe."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """The database answers within ``READYZ_TIMEOUT`` seconds; 503 otherwise, so a load balancer
    stops sending traffic here. Stripe is not checked: pages cope with it being away."""
    try:
        db.ping(float(current_app.config["READYZ_TIMEOUT"]))
    except SQLAlchemyError:
        return jsonify(status="unavailable", database="unreachable"), 503
    return jsonify(status="ok", database="ok"), 200


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics (of every gunicorn worker when ``PROMETHEUS_MULTIPROC_DIR`` is set),
    with the backlog of webhook events and mails read from the database."""
    body, content_type = exposition(db.session())
    return Response(body, content_type=content_type)
