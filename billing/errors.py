"""Domain errors and the one shape every error takes.

Services raise a :class:`DomainError` subclass; the app turns it into
``{"error": {"code", "message", "field"}}`` for the API and webhooks, or a page for the browser.
"""

from __future__ import annotations

import math
import time
from contextlib import suppress
from typing import Any

from flask import Flask, Response, current_app, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from markupsafe import escape
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.routing import RequestRedirect


class DomainError(Exception):
    """A request the domain refuses; ``code`` is stable, ``message`` is for people."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code


class ValidationFailed(DomainError):
    """A field's value is not acceptable."""

    code = "validation_failed"


class NotFound(DomainError):
    """The thing asked for does not exist (or is not the caller's to see)."""

    status = 404
    code = "not_found"


class Conflict(DomainError):
    """The request contradicts the current state (already exists, already used)."""

    status = 409
    code = "conflict"


class Forbidden(DomainError):
    """The caller may not do this."""

    status = 403
    code = "forbidden"


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The JSON error shape of the whole service."""
    return {"error": {"code": code, "message": message, "field": field}}


def wants_json() -> bool:
    """Whether the current request should get JSON errors (API, webhooks, or asked for JSON)."""
    if (request.script_root + request.path).startswith(("/api/", "/webhooks/")):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


STATUS_MESSAGES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "The request could not be understood."),
    401: ("unauthorized", "You need to identify yourself for this."),
    403: ("forbidden", "Your account may not open this page."),
    404: ("not_found", "There is nothing at this address."),
    405: ("method_not_allowed", "This address does not accept {method} requests."),
    413: ("payload_too_large", "What you sent is larger than the {limit} we accept."),
    414: ("uri_too_long", "The address is longer than the {limit} characters we accept."),
    415: ("unsupported_media_type", "Send the body as application/json (UTF-8)."),
    429: ("too_many_requests", "Too many requests. Try again in {wait}."),
    500: ("internal_error", "Something went wrong on our side and nothing was saved."),
}
"""The stable code and the message of each HTTP status the service answers with on its own."""

_CSRF_MESSAGE = (
    "This form has expired or was not sent from our page. Go back, reload the page and send it "
    "again."
)


def _size(limit: int) -> str:
    if limit >= 1024 * 1024 and limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MB"
    if limit >= 1024 and limit % 1024 == 0:
        return f"{limit // 1024} KB"
    return f"{limit} bytes"


def _wait_words(seconds: int) -> str:
    if seconds < 90:
        return "1 second" if seconds == 1 else f"{seconds} seconds"
    minutes = -(-seconds // 60)
    return f"{minutes} minutes" if minutes < 90 else f"{-(-minutes // 60)} hours"


def retry_after() -> int:
    """Seconds until the rate limit this request broke lets it through again (at least 1)."""
    from billing.extensions import limiter

    breached = limiter.current_limit
    if breached is None:
        return 60
    return max(1, math.ceil(breached.reset_at - time.time()))  # the limiter runs on the wall clock


def status_message(status: int, **values: Any) -> tuple[str, str]:
    """The code and message for ``status`` (see :data:`STATUS_MESSAGES`), filled with ``values``."""
    code, message = STATUS_MESSAGES.get(status, ("error", "The request did not work."))
    config = current_app.config
    fill = {
        "method": request.method,
        "limit": _size(int(config.get("MAX_CONTENT_LENGTH") or 0))
        if status == 413
        else config.get("MAX_URL_LENGTH"),
        **values,
    }
    return code, message.format(**fill)


def _render(
    status: int,
    code: str,
    message: str,
    field: str | None,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> tuple[Response | str, int, dict[str, str]]:
    if wants_json():
        return jsonify(error_body(code, message, field)), status, headers or {}
    page = render_template("error.html", status=status, message=message, field=field, **context)
    return page, status, headers or {}


def _fallback_page(status: int, message: str) -> tuple[str, int, dict[str, str]]:
    """A page that needs nothing (no template, no database), for when the layout cannot render."""
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>Something went wrong · Tollgate</title>"
        '<link rel="stylesheet" href="/static/tollgate.css"></head><body><main id="main">'
        f"<h1>Something went wrong</h1><p>{escape(message)}</p>"
        '<p><a href="/">Go to the home page</a></p></main></body></html>'
    )
    return body, status, {"Content-Type": "text/html; charset=utf-8"}


def _http_response(exc: HTTPException) -> Any:
    """The answer for an HTTP error raised by Werkzeug, Flask, Flask-WTF or Flask-Limiter."""
    status = exc.code or 500
    headers: dict[str, str] = {}
    context: dict[str, Any] = {}
    if status == 429:
        wait = retry_after()
        headers["Retry-After"] = str(wait)
        context["retry_after"] = wait
        code, message = status_message(429, wait=_wait_words(wait))
    else:
        code, message = status_message(status)
        if isinstance(exc, CSRFError):
            code, message = "csrf_failed", _CSRF_MESSAGE
        elif status not in STATUS_MESSAGES and exc.name:
            code = exc.name.lower().replace(" ", "_")
        if (
            exc.description
            and exc.description != type(exc).description
            and not isinstance(exc, CSRFError)
        ):
            message = exc.description  # a message of ours, given to abort()
    if status == 405 and getattr(exc, "valid_methods", None):
        allowed = list(exc.valid_methods)  # type: ignore[attr-defined]
        headers["Allow"] = ", ".join(allowed)
        context["can_get"] = "GET" in allowed
    return _render(status, code, message, None, headers, **context)


def _redirect_in_shape() -> Response | None:
    """A redirect Werkzeug's routing answers (308 to the canonical address), as JSON for the API.

    Flask hands routing redirects to no error handler, so this runs before the view instead.
    """
    exc = request.routing_exception
    if not isinstance(exc, RequestRedirect) or not wants_json():
        return None
    response = exc.get_response()
    message = f"This resource lives at {response.headers.get('Location', 'another address')}."
    body = jsonify(error_body("moved_permanently", message))
    body.status_code = response.status_code
    if "Location" in response.headers:
        body.headers["Location"] = response.headers["Location"]
    return body


def _rollback() -> None:
    """Roll back the request's session, so the error page can read (and nothing half-done stays)."""
    from billing import db

    with suppress(Exception):
        db.session().rollback()


def init_app(app: Flask) -> None:
    """Register the handlers that give every error the one shape."""

    @app.errorhandler(DomainError)
    def _domain_error(exc: DomainError) -> Any:
        return _render(exc.status, exc.code, exc.message, exc.field)

    app.before_request(_redirect_in_shape)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        if exc.code is None or exc.code < 400:
            return exc
        if exc.code >= 500:
            _rollback()
        return _http_response(exc)

    @app.errorhandler(InternalServerError)
    def _internal_error(exc: InternalServerError) -> Any:
        _rollback()
        code, message = status_message(500)
        try:
            return _render(500, code, message, None)
        except Exception:
            app.logger.exception("The error page itself failed")
            return _fallback_page(500, message)
