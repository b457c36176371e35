"""The page for "our payment provider is not answering": Stripe timed out or failed on its side.

Every call to Stripe has connect and read timeouts (``STRIPE_CONNECT_TIMEOUT``,
``STRIPE_READ_TIMEOUT``), so a page waiting on Stripe fails in seconds instead of hanging until
the server kills it. The failed request's transaction is rolled back and every creation on Stripe
carries an idempotency key, so nothing is half-done and trying again is safe.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template, request

from billing.errors import error_body, wants_json
from billing.gateway import GatewayUnavailableError
from billing.services.payments import PaymentServiceUnavailable

bp = Blueprint("unavailable", __name__)
RETRY_AFTER = 60
MESSAGE = (
    "Our payment provider is not answering. Nothing was charged; please try again in a minute."
)


@bp.app_errorhandler(PaymentServiceUnavailable)
@bp.app_errorhandler(GatewayUnavailableError)
def provider_not_answering(_exc: Exception) -> tuple[Response | str, int, dict[str, str]]:
    """503 with ``Retry-After``: the page (or the JSON error) saying to try again in a minute."""
    headers = {"Retry-After": str(RETRY_AFTER)}
    if wants_json():
        return jsonify(error_body(PaymentServiceUnavailable.code, MESSAGE)), 503, headers
    again = request.full_path.rstrip("?") if request.method == "GET" else request.path
    page = render_template("payments/unavailable.html", message=MESSAGE, try_again=again)
    return page, 503, headers
