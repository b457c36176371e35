"""Stripe webhook intake: ``POST /webhooks/stripe``.

The view verifies, stores and commits, and answers at once, calling nothing outside the
database: a delivery takes milliseconds whatever Stripe or the handlers do. The worker
(``flask billing worker``, :mod:`billing.worker`) handles stored events afterwards.

1. A body larger than ``WEBHOOK_MAX_BYTES`` is refused with 413 before it is read in full, and
   before its signature is checked.
2. The signature is checked on the raw body against every configured secret, with a 300 s
   timestamp tolerance. Any failure: 400, and nothing is stored.
3. The body must be a Stripe event envelope (:mod:`webhooks.envelope`): otherwise 400, stored
   nowhere.
4. The event is stored under its unique Stripe id in one autocommit statement (no ``BEGIN`` or
   ``COMMIT`` round trips; durable when it returns): ``stored`` (new), or
   ``duplicate`` (a redelivery, no effect). An event of a type we handle whose ``data.object``
   no handler can use is stored dead (``unhandleable``): 200 all the same, so Stripe stops
   retrying what can never succeed, and it stays visible to ``replay-events --dead``. A
   database that does not answer gets 503: Stripe delivers the event again later.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from sqlalchemy.exc import DBAPIError, OperationalError

from billing import db
from billing.clock import current_clock
from billing.errors import error_body
from billing.metrics import WEBHOOK_DELIVERIES

log = logging.getLogger(__name__)
PREFIX = "/webhooks"
bp = Blueprint("webhooks", __name__)


def mount(app: Flask) -> Flask:
    """Serve the intake as its own lean app under ``/webhooks``, as the API is served; return it.

    A delivery needs none of the pages' machinery (sessions, log-in, CSRF, CSP headers): the
    intake app shares the main app's settings and extensions (database, clock) and nothing else,
    so storing an event costs little more than its insert.
    """
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from billing import errors

    intake = Flask(__name__)
    intake.config = app.config
    intake.extensions = app.extensions
    intake.register_blueprint(bp)
    intake.teardown_appcontext(db.close_session)
    errors.init_app(intake)
    app.extensions["webhooks_app"] = intake
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {PREFIX: intake})  # type: ignore[method-assign]
    return intake


@bp.post("/stripe")
def stripe_webhook() -> tuple[Response, int]:
    """Verify and store one Stripe event delivery; the worker handles it later."""
    from webhooks.envelope import InvalidEnvelope, parse, unhandleable_reason
    from webhooks.registry import handler_for
    from webhooks.verify import SignatureError, verify

    limit = int(current_app.config["WEBHOOK_MAX_BYTES"])
    if (request.content_length or 0) > limit:
        return _refuse(413, "payload_too_large", f"The body is larger than {limit} bytes.")
    payload = request.stream.read(limit + 1)
    if len(payload) > limit:
        return _refuse(413, "payload_too_large", f"The body is larger than {limit} bytes.")
    now = current_clock().now()
    try:
        verify(
            payload,
            request.headers.get("Stripe-Signature"),
            current_app.config["STRIPE_WEBHOOK_SECRETS"],
            now=now,
        )
    except SignatureError:
        return _refuse(400, "invalid_signature", "The Stripe signature does not verify.")
    try:
        event = parse(payload, now=now)
    except InvalidEnvelope as exc:
        return _refuse(400, "invalid_payload", f"The body is not a Stripe event: {exc}")

    dead_because = unhandleable_reason(event) if handler_for(event["type"]) else None
    try:
        new = _store(event, now, dead_because)
    except OperationalError:
        log.exception("webhook intake: the database is not answering")
        return _refuse(503, "unavailable", "The event could not be stored; deliver it again.")
    outcome = "duplicate" if not new else "unhandleable" if dead_because else "stored"
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
    return jsonify(received=True, outcome=outcome), 200


def _store(event: dict[str, Any], now: datetime, dead_because: str | None) -> bool:
    """Store ``event`` in one autocommit statement (durable when it returns); whether it is new.

    A connection found dead (the database restarted since it was last used) is discarded and the
    insert tried once more on a fresh one: storing is idempotent, so a retry is always safe.
    """
    try:
        return _insert(event, now, dead_because)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return _insert(event, now, dead_because)


def _insert(event: dict[str, Any], now: datetime, dead_because: str | None) -> bool:
    from webhooks import store

    with db.autocommit_engine().connect() as connection:
        return store.store(connection, event, now=now, dead_because=dead_because)[1]


def _refuse(status: int, code: str, message: str) -> tuple[Response, int]:
    WEBHOOK_DELIVERIES.labels(outcome=code).inc()
    return jsonify(error_body(code, message)), status
