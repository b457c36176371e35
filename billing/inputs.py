"""Every text input checked in one place, and the limits on what one request may carry.

Both apps (the pages and the API under ``/api/v1``) run :func:`check_request` before any view:

- The address (path and query) may be at most ``MAX_URL_LENGTH`` bytes: 414.
- Every path parameter, query parameter (name and value) and form field (name and value) is text
  without NUL bytes and without lone surrogates (PostgreSQL stores neither, and no person types
  them): 400 naming the field.
- A body larger than ``MAX_CONTENT_LENGTH`` bytes is refused before it is read: 413.

The API also runs :func:`check_json_body`: a request with a body (POST, PUT, PATCH) must be
``application/json`` in UTF-8 (a ``charset`` other than ``utf-8`` is a 415, so are other or missing
content types); the body must be UTF-8, JSON without ``NaN``/``Infinity``, at most
:data:`MAX_JSON_DEPTH` deep, and its strings (member names included) pass the same text check.
Views read the parsed body with :func:`json_body`. The pages run :func:`check_form_body`: a JSON
body there is a 415 (the pages' forms are forms).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

from flask import Flask, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from billing.errors import DomainError, ValidationFailed

MAX_JSON_DEPTH = 32
"""How deeply arrays and objects may nest in a JSON body (the API's bodies are one level deep)."""
IP_MAX_LENGTH = 45
"""The longest textual IP address (IPv6 with an embedded IPv4 address)."""
EMAIL_MAX_LENGTH = 254
"""The longest e-mail address (RFC 5321's path limit less its angle brackets)."""
JSON_MIMETYPE = "application/json"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_FORBIDDEN = re.compile("[\x00\ud800-\udfff]")
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_FORM_MIMETYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


class InvalidText(ValidationFailed):
    """A text input carries a character no text may hold (a NUL byte or a lone surrogate)."""


class InvalidJson(ValidationFailed):
    """The body is not JSON this API reads (syntax, encoding, ``NaN``, or nested too deeply)."""


class UnsupportedMediaType(DomainError):
    """The body is not of the type the app reads (the API: ``application/json`` in UTF-8; the
    pages: a form)."""

    status = 415
    code = "unsupported_media_type"


class UrlTooLong(DomainError):
    """The address of the request is longer than the service accepts."""

    status = 414
    code = "uri_too_long"


def check_text(value: str, field: str | None) -> None:
    """Refuse ``value`` when it holds a NUL byte or a lone surrogate (InvalidText naming ``field``)."""
    found = _FORBIDDEN.search(value)
    if found is None:
        return
    what = "a NUL byte" if found.group() == "\x00" else "a lone surrogate (not a character)"
    where = f"The field “{field}” contains" if field else "A name in the request contains"
    raise InvalidText(f"{where} {what}, which no text may hold.", field=field)


def _check_pairs(pairs: Any) -> None:
    for name, value in pairs:
        check_text(name, None)
        if isinstance(value, str):
            check_text(value, name)


def _uri_length() -> int:
    environ = request.environ
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw, str):
        return len(raw)
    path = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
    query = environ.get("QUERY_STRING", "")
    return len(path) + (len(query) + 1 if query else 0)


def check_request() -> None:
    """The checks every request passes before its view runs (see the module's docstring)."""
    limit = int(current_app.config["MAX_URL_LENGTH"])
    if _uri_length() > limit:
        raise UrlTooLong(f"The address is longer than {limit} characters.")
    if request.routing_exception is not None:
        return  # 404, 405 or a redirect: no view will read any input
    _check_pairs((request.view_args or {}).items())
    _check_pairs(request.args.items(multi=True))
    if request.mimetype in _FORM_MIMETYPES:
        _check_pairs(request.form.items(multi=True))


def check_json_body() -> None:
    """Refuse a body that is not UTF-8 JSON the API reads; keep the parsed body for the view."""
    if request.routing_exception is not None or request.method not in _BODY_METHODS:
        return
    if request.mimetype != JSON_MIMETYPE:
        raise UnsupportedMediaType(
            "Send the body as application/json (UTF-8).", field="Content-Type"
        )
    charset = request.mimetype_params.get("charset")
    if charset is not None and charset.lower() not in {"utf-8", "utf8"}:
        raise UnsupportedMediaType(f"Send the body in UTF-8, not {charset}.", field="Content-Type")
    data = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit:
        raise RequestEntityTooLarge()  # a streamed (chunked) body, cut at the limit
    g.json_body = parse_json(data)


def json_body() -> Any:
    """The body :func:`check_json_body` parsed (``None`` for a request without one)."""
    return g.get("json_body")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _too_deep(text: str) -> bool:
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for token in _JSON_TOKENS.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif bracket in "]}":
            depth -= 1
    return False


def parse_json(data: bytes) -> Any:
    """``data`` as JSON, every string checked; InvalidJson or InvalidText when it cannot be read."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson("The body is not valid UTF-8.") from exc
    if _too_deep(text):
        raise InvalidJson(f"The body nests arrays or objects more than {MAX_JSON_DEPTH} deep.")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise InvalidJson(f"The body is not valid JSON: {exc}.") from exc
    _check_json_strings(value)
    return value


def _check_json_strings(value: Any) -> None:
    stack: list[tuple[Any, str | None]] = [(value, None)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            check_text(item, path)
        elif isinstance(item, dict):
            for name, member in item.items():
                check_text(name, path)
                stack.append((member, name if path is None else f"{path}.{name}"))
        elif isinstance(item, list):
            stack.extend((member, f"{path or ''}[{index}]") for index, member in enumerate(item))


def check_form_body() -> None:
    """Refuse a JSON body on a page: pages read forms, and Flask-WTF would read a JSON body as
    the form's data (a JSON list or ``true`` as fields, nested as deep as it came)."""
    if request.routing_exception is not None or request.method not in _BODY_METHODS:
        return
    if request.is_json:
        raise UnsupportedMediaType(
            "Send the form as application/x-www-form-urlencoded or multipart/form-data.",
            field="Content-Type",
        )


def init_app(app: Flask, *, json_api: bool = False) -> None:
    """Run the checks before every view of ``app``: the JSON body checks on the API, the form
    body check on the pages."""
    app.before_request(check_request)
    app.before_request(check_json_body if json_api else check_form_body)
