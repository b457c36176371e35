"""Stripe webhook intake: ``POST /webhooks/stripe``.

The view only verifies and stores; :func:`webhooks.process.process` handles the event:

1. The signature is checked on the raw body against every configured secret, with a 300 s
   timestamp tolerance. Any failure: 400, and nothing is stored.
2. The event is stored under its unique Stripe id and committed, so it is never lost.
3. It is handled in one transaction. Already handled (a redelivery, or a concurrent duplicate on
   another node): 200, no effect. Handled now, or of a type we do not listen to: 200. The handler
   failed: everything it wrote is rolled back, the error is recorded, and 500 tells Stripe to retry
   (``flask billing replay-events`` retries by hand).
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, jsonify, request

from billing import db
from billing.clock import current_clock
from billing.errors import error_body

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@bp.post("/stripe")
def stripe_webhook() -> tuple[Response, int]:
    """Verify, store and handle one Stripe event delivery."""
    from webhooks import store
    from webhooks.process import Outcome, process
    from webhooks.verify import SignatureError, verify

    payload = request.get_data(cache=False)
    now = current_clock().now()
    try:
        verify(
            payload,
            request.headers.get("Stripe-Signature"),
            current_app.config["STRIPE_WEBHOOK_SECRETS"],
            now=now,
        )
    except SignatureError:
        return jsonify(
            error_body("invalid_signature", "The Stripe signature does not verify.")
        ), 400
    try:
        event = json.loads(payload)
    except ValueError:
        event = None
    if not _looks_like_an_event(event):
        return jsonify(error_body("invalid_payload", "The body is not a Stripe event.")), 400

    session = db.session()
    row = store.store(session, event, now=now)
    session.commit()
    outcome = process(row.id, gateway())
    status = 500 if outcome == Outcome.FAILED else 200
    return jsonify(received=True, outcome=outcome.value), status


def _looks_like_an_event(event: object) -> bool:
    """A Stripe event's envelope: an ``evt_`` id, a type we can store, an integer creation time."""
    return (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and event["id"].startswith("evt_")
        and len(event["id"]) <= 255
        and isinstance(event.get("type"), str)
        and 0 < len(event["type"]) <= 128
        and isinstance(event.get("created"), int)
        and isinstance(event.get("data", {}), dict)
    )


def gateway() -> object:
    """The app's Stripe gateway (created once per app)."""
    return current_app.extensions["stripe_gateway"]
