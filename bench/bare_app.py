"""The baselines: bare Flask endpoints answering like the entitlement API and the webhook intake."""

from __future__ import annotations

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

app = Flask(__name__)


@app.get("/api/v1/readers/<reader_id>/entitlement")
def entitlement(reader_id: str) -> ResponseReturnValue:
    """Answer with fixed values in the shape of Tollgate's entitlement answer."""
    return jsonify(
        granted=True,
        reason="subscription",
        until="2026-12-25T09:00:00Z",
        reader_id=reader_id,
        plan="individual-monthly",
        group_id=None,
        checked_at="2026-11-25T09:00:00Z",
    )


@app.post("/webhooks/stripe")
def webhook() -> ResponseReturnValue:
    """Read the body and answer as Tollgate's intake does, storing nothing (the intake's baseline)."""
    request.get_data()
    return jsonify(received=True, outcome="stored")
