"""Domain errors and the one shape every error takes.

Services raise a :class:`DomainError` subclass; the app turns it into
``{"error": {"code", "message", "field"}}`` for the API and webhooks, or a page for the browser.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException


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


def _render(status: int, code: str, message: str, field: str | None) -> tuple[Response | str, int]:
    if wants_json():
        return jsonify(error_body(code, message, field)), status
    return render_template("error.html", status=status, message=message), status


def init_app(app: Flask) -> None:
    """Register the handlers that give every error the one shape."""

    @app.errorhandler(DomainError)
    def _domain_error(exc: DomainError) -> tuple[Response | str, int]:
        return _render(exc.status, exc.code, exc.message, exc.field)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        if exc.code is None or exc.code < 400:
            return exc
        code = (exc.name or "error").lower().replace(" ", "_")
        response = _render(exc.code, code, exc.description or exc.name, None)
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            return response[0], 405, {"Allow": ", ".join(exc.valid_methods)}  # type: ignore[attr-defined]
        return response
