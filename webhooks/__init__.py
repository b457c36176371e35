"""Stripe webhook intake: ``POST /webhooks/stripe`` (the handlers arrive with the payments work)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
