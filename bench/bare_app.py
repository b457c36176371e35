"""The baseline: a bare Flask endpoint returning a JSON dict the size of an entitlement answer."""

from __future__ import annotations

from flask import Flask, jsonify
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
