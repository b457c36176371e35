"""The OpenAPI 3.1 document of the content-site API, served at ``/api/v1/openapi.json``.

Built once, as a plain dict, from the same constants the views and services use (scopes, the
entitlement reasons); ``tests/test_openapi.py`` runs schemathesis against it to keep it true.
"""

from __future__ import annotations

import json
from typing import Any

from billing.inputs import EMAIL_MAX_LENGTH, IP_MAX_LENGTH
from billing.services.api_clients import (
    SCOPE_DESCRIPTIONS,
    SCOPE_ENTITLEMENTS_READ,
    SCOPE_READERS_READ,
    SCOPE_TOKENS_ISSUE,
)
from billing.services.entitlements import GRANTING_REASONS, Reason

REASON_MEANINGS: dict[Reason, str] = {
    Reason.SUBSCRIPTION: "an individual subscription, paid for the current period",
    Reason.TRIAL: "a free trial (Tollgate's own, or a subscription's trial)",
    Reason.GRACE_PERIOD: "a cancelled subscription, still paid until the end of its period",
    Reason.PAST_DUE_GRACE: "a subscription whose payment failed, within the dunning grace",
    Reason.GROUP_SEAT: "a seat in a group subscription",
    Reason.GROUP_IP: "an address in a group's registered IP ranges",
    Reason.COMPLIMENTARY: "complimentary access granted by staff",
    Reason.NONE: "nothing gives access",
    Reason.EMAIL_UNVERIFIED: "the reader has not verified their e-mail address yet",
    Reason.TRIAL_EXPIRED: "the free trial ran out",
    Reason.SUBSCRIPTION_ENDED: "the subscription ended",
    Reason.PAYMENT_FAILED: "the payment failed and the grace is over",
    Reason.SEAT_REMOVED: "the reader's group seat was removed",
}
"""What each reason means, for the content site's developers."""

_DATE_TIME = {"type": "string", "format": "date-time", "examples": ["2026-12-09T09:00:00Z"]}
_NULLABLE_STRING = {"type": ["string", "null"]}
_READER_ID_SCHEMA = {
    "type": "string",
    "minLength": 5,
    "maxLength": 32,
    "pattern": "^rdr_[A-Za-z0-9_-]{1,28}$",
    "examples": ["rdr_3kTMdx0aQm1bZc4p"],
}
_IP_SCHEMA = {
    "type": "string",
    "minLength": 2,
    "maxLength": IP_MAX_LENGTH,
    "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
    "examples": ["192.0.2.10", "2001:db8::1"],
}
"""A plain address: no spaces, port, prefix length or IPv6 zone id (``%eth0``)."""
_EMAIL_SCHEMA = {
    "type": "string",
    "format": "email",
    "minLength": 3,
    "maxLength": EMAIL_MAX_LENGTH,
    "examples": ["reader@example.org"],
}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _error_response(description: str, codes: list[str]) -> dict[str, Any]:
    return {
        "description": f"{description} Error codes: {', '.join(f'`{c}`' for c in codes)}.",
        "content": {"application/json": {"schema": _ref("schemas", "Error")}},
    }


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _ok(schema_name: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref("schemas", schema_name)}},
    }


def _operation(
    *,
    operation_id: str,
    summary: str,
    description: str,
    scope: str,
    responses: dict[str, Any],
    parameters: list[dict[str, Any]] | None = None,
    request_body: dict[str, Any] | None = None,
    rate_limited: bool = False,
) -> dict[str, Any]:
    """An authenticated operation: the scope it needs, and the errors it may answer.

    Every operation may answer 400 (a text input with a NUL byte or a lone surrogate, or another
    bad input), 401, 403, 414 (an address longer than the limit) and 500; those with a body also
    413 (larger than the limit) and 415 (not ``application/json`` in UTF-8); the rate-limited
    ones 429.
    """
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": f"{description}\n\nNeeds the scope `{scope}`.",
        "tags": ["content site"],
        "security": [{"bearerAuth": []}],
    }
    if parameters:
        operation["parameters"] = parameters
    if request_body:
        operation["requestBody"] = request_body
    operation["responses"] = {
        "400": _ref("responses", "BadRequest"),
        **responses,
        "401": _ref("responses", "Unauthorized"),
        "403": _ref("responses", "Forbidden"),
        "414": _ref("responses", "UriTooLong"),
        "500": _ref("responses", "InternalError"),
    }
    if request_body:
        operation["responses"]["413"] = _ref("responses", "PayloadTooLarge")
        operation["responses"]["415"] = _ref("responses", "UnsupportedMediaType")
    if rate_limited:
        operation["responses"]["429"] = _ref("responses", "TooManyRequests")
    return operation


def build() -> dict[str, Any]:
    """The whole OpenAPI document as a dict."""
    reasons = [reason.value for reason in Reason]
    granting = sorted(reason.value for reason in GRANTING_REASONS)
    reason_lines = "\n".join(
        f"- `{reason.value}` ({'granted' if reason in GRANTING_REASONS else 'refused'}): "
        f"{REASON_MEANINGS[reason]}"
        for reason in Reason
    )
    reader_id_param = {
        "name": "reader_id",
        "in": "path",
        "required": True,
        "description": "The reader's public id (`rdr_...`), as carried in tokens.",
        "schema": _READER_ID_SCHEMA,
    }
    ip_description = (
        "The visitor's address (IPv4 or IPv6; an IPv4-mapped IPv6 address counts as its IPv4). "
        "An address in an approved office range of a group with a valid subscription is granted "
        "with `group_ip` and the group's `group_id`; any other is refused with `none`."
    )
    not_found_reader = _error_response(
        "No reader has this id (or it was deleted).", ["reader_not_found"]
    )
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "description": "The one error shape of the service.",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "field"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {
                            "type": "string",
                            "description": "Stable, for programs (e.g. `invalid_api_key`).",
                        },
                        "message": {"type": "string", "description": "For people."},
                        "field": {
                            **_NULLABLE_STRING,
                            "description": "The input at fault (a body member, a parameter, "
                            "`Authorization`), or null when the request as a whole is wrong.",
                        },
                    },
                }
            },
        },
        "AccessRefusedError": {
            "type": "object",
            "description": "The one error shape, with the refusing decision's reason beside the "
            "code: `POST /api/v1/tokens` for a reader who may not read (no token is issued).",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "field", "reason"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string", "enum": ["access_refused"]},
                        "message": {"type": "string", "description": "For people."},
                        "field": {"type": "string", "enum": ["reader_id"]},
                        "reason": {
                            "type": "string",
                            "enum": sorted(
                                reason.value for reason in Reason if reason not in GRANTING_REASONS
                            ),
                            "description": "Why the decision refuses.",
                        },
                    },
                }
            },
        },
        "Reason": {
            "type": "string",
            "enum": reasons,
            "description": "Why access is granted or refused; a closed set.\n\n" + reason_lines,
        },
        "Decision": {
            "type": "object",
            "description": "An entitlement decision. Granting reasons: "
            + ", ".join(f"`{r}`" for r in granting)
            + "; every other reason refuses.",
            "required": [
                "granted",
                "reason",
                "until",
                "reader_id",
                "plan",
                "group_id",
                "checked_at",
            ],
            "additionalProperties": False,
            "properties": {
                "granted": {"type": "boolean", "description": "May the reader read?"},
                "reason": _ref("schemas", "Reason"),
                "until": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "When the access ends unless renewed (UTC); null for refusals.",
                },
                "reader_id": {
                    **_NULLABLE_STRING,
                    "description": "The reader's public id; null for an anonymous visitor.",
                },
                "plan": {**_NULLABLE_STRING, "description": "The plan access comes from."},
                "group_id": {
                    **_NULLABLE_STRING,
                    "description": "The group that grants access (`group_seat`, `group_ip`); "
                    "of several, the one whose access lasts longest. Null otherwise.",
                },
                "checked_at": {**_DATE_TIME, "description": "When Tollgate decided (UTC)."},
            },
        },
        "CheckRequest": {
            "description": "Exactly one of: a token; a reader id (with the visitor's address, "
            "optionally); an address alone.",
            "oneOf": [
                {
                    "type": "object",
                    "title": "By token",
                    "required": ["token"],
                    "additionalProperties": False,
                    "properties": {
                        "token": {
                            "type": "string",
                            "minLength": 1,
                            "description": "An access token.",
                        }
                    },
                },
                {
                    "type": "object",
                    "title": "By reader",
                    "required": ["reader_id"],
                    "additionalProperties": False,
                    "properties": {
                        "reader_id": _READER_ID_SCHEMA,
                        "ip": {**_IP_SCHEMA, "description": ip_description},
                    },
                },
                {
                    "type": "object",
                    "title": "By address",
                    "required": ["ip"],
                    "additionalProperties": False,
                    "properties": {"ip": {**_IP_SCHEMA, "description": ip_description}},
                },
            ],
        },
        "TokenRequest": {
            "type": "object",
            "required": ["reader_id"],
            "additionalProperties": False,
            "properties": {"reader_id": _READER_ID_SCHEMA},
        },
        "Token": {
            "type": "object",
            "required": ["token", "expires_at"],
            "additionalProperties": False,
            "properties": {
                "token": {
                    "type": "string",
                    "description": "Verify it locally with this client's token keys (format in "
                    'the README\'s "Token format": `KID.PAYLOAD.TIMESTAMP.SIGNATURE`, payload '
                    "members `reader_id`, `reason`, `plan`, `group_id`, `until`, `client_id`, "
                    "`exp`), or with `POST /api/v1/entitlement/check`.",
                },
                "expires_at": {
                    **_DATE_TIME,
                    "description": "The token's expiry: at most the configured lifetime, and "
                    "never after the decision's `until`.",
                },
            },
        },
        "Trial": {
            "type": "object",
            "required": ["status", "started_at", "ends_at"],
            "additionalProperties": False,
            "properties": {
                "status": {"type": "string", "enum": ["active", "converted", "expired"]},
                "started_at": _DATE_TIME,
                "ends_at": _DATE_TIME,
            },
        },
        "Reader": {
            "type": "object",
            "description": "A reader as support sees them.",
            "required": [
                "reader_id",
                "email",
                "name",
                "country",
                "verified",
                "created_at",
                "trial",
                "entitlement",
            ],
            "additionalProperties": False,
            "properties": {
                "reader_id": {"type": "string"},
                "email": {"type": "string"},
                "name": {"type": "string"},
                "country": {"type": "string", "description": "ISO 3166-1 alpha-2."},
                "verified": {"type": "boolean", "description": "E-mail address verified."},
                "created_at": _DATE_TIME,
                "trial": {"oneOf": [_ref("schemas", "Trial"), {"type": "null"}]},
                "entitlement": _ref("schemas", "Decision"),
            },
        },
    }
    responses: dict[str, Any] = {
        "BadRequest": _error_response(
            "The input is not acceptable; `field` names the culprit.",
            ["validation_failed", "token_invalid", "token_expired"],
        ),
        "Unauthorized": {
            **_error_response(
                "No API key, or one that is unknown, rotated or revoked.", ["invalid_api_key"]
            ),
            "headers": {
                "WWW-Authenticate": {
                    "description": '`Bearer realm="tollgate"`',
                    "schema": {"type": "string"},
                }
            },
        },
        "Forbidden": _error_response(
            "The key lacks the scope this operation needs.", ["insufficient_scope"]
        ),
        "PayloadTooLarge": _error_response(
            "The body is larger than `MAX_CONTENT_LENGTH` bytes (1 MB by default); it was not "
            "read.",
            ["payload_too_large"],
        ),
        "UriTooLong": _error_response(
            "The address (path and query) is longer than `MAX_URL_LENGTH` characters (8000 by "
            "default).",
            ["uri_too_long"],
        ),
        "UnsupportedMediaType": _error_response(
            "The body is not `application/json`, or its `charset` is not `utf-8` (`field` is "
            "`Content-Type`).",
            ["unsupported_media_type"],
        ),
        "InternalError": _error_response(
            "Tollgate failed; nothing was changed. Retry later.", ["internal_error"]
        ),
        "TooManyRequests": {
            **_error_response(
                "Too many calls with this key; wait and retry.", ["too_many_requests"]
            ),
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait.",
                    "schema": {"type": "string"},
                }
            },
        },
    }
    decision_ok = _ok("Decision", "The decision.")
    bad_request = _ref("responses", "BadRequest")
    paths: dict[str, Any] = {
        "/api/v1/readers/{reader_id}/entitlement": {
            "get": _operation(
                operation_id="getReaderEntitlement",
                summary="May this reader read?",
                description="The decision for a reader, answered from a per-process cache that "
                "learns of changes within about a second. Call it on every article view, or hold "
                "a token instead. Not rate-limited.",
                scope=SCOPE_ENTITLEMENTS_READ,
                parameters=[reader_id_param],
                responses={"200": decision_ok, "404": not_found_reader},
            )
        },
        "/api/v1/entitlement": {
            "get": _operation(
                operation_id="getAnonymousEntitlement",
                summary="May an anonymous visitor from this address read?",
                description="The decision for a visitor who is not logged in. Not rate-limited.",
                scope=SCOPE_ENTITLEMENTS_READ,
                parameters=[
                    {
                        "name": "ip",
                        "in": "query",
                        "required": True,
                        "description": ip_description,
                        "schema": _IP_SCHEMA,
                    }
                ],
                responses={"200": decision_ok, "400": bad_request},
            )
        },
        "/api/v1/entitlement/check": {
            "post": _operation(
                operation_id="checkEntitlement",
                summary="Check a token, a reader, or an address",
                description="With a token: verifies it (signature, expiry, and that it was issued "
                "to this API client, with one of its token keys that is neither retired nor "
                "revoked) and returns the decision it carries; a token of the old form, signed "
                "before token keys, is accepted until its `exp` (and never from 2027-01-31); an "
                "expired token is a "
                "400 `token_expired`, any other bad token a 400 `token_invalid`, both naming the "
                "field `token`. With `reader_id`: the reader's decision (and, when it is a "
                "refusal and `ip` is given, the address's decision if that grants). With `ip` "
                "alone: the anonymous decision. A body that is not a JSON object, or names no "
                "or several ways, is a 400 (`field` null for the former, the member at fault "
                "for the latter). Not rate-limited.",
                scope=SCOPE_ENTITLEMENTS_READ,
                request_body=_json_body(_ref("schemas", "CheckRequest"), "What to check."),
                responses={"200": decision_ok, "400": bad_request, "404": not_found_reader},
            )
        },
        "/api/v1/tokens": {
            "post": _operation(
                operation_id="issueToken",
                summary="Issue an access token for a reader",
                description="Signs the reader's current decision with the client's signing token "
                "key, when it grants. The token lives for the configured lifetime (15 minutes by "
                "default), never past the decision's `until`, and is refused at its `exp`. A "
                "reader who may not read gets a 409 `access_refused` with the decision's "
                "`reason`, and no token; a client with no token key that signs a 409 "
                "`no_token_key`.",
                scope=SCOPE_TOKENS_ISSUE,
                request_body=_json_body(_ref("schemas", "TokenRequest"), "Whose token."),
                responses={
                    "201": _ok("Token", "The token and its expiry."),
                    "400": bad_request,
                    "404": not_found_reader,
                    "409": {
                        "description": "No token: the reader may not read (`access_refused`, "
                        "with the decision's `reason`), or the client has no token key that "
                        "signs now (`no_token_key`, in the plain error shape).",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        _ref("schemas", "AccessRefusedError"),
                                        _ref("schemas", "Error"),
                                    ]
                                }
                            }
                        },
                    },
                },
                rate_limited=True,
            )
        },
        "/api/v1/readers/{reader_id}": {
            "get": _operation(
                operation_id="getReader",
                summary="Look a reader up by id (support)",
                description="The reader's account, trial and decision.",
                scope=SCOPE_READERS_READ,
                parameters=[reader_id_param],
                responses={"200": _ok("Reader", "The reader."), "404": not_found_reader},
                rate_limited=True,
            )
        },
        "/api/v1/readers": {
            "get": _operation(
                operation_id="findReaderByEmail",
                summary="Look a reader up by e-mail address (support)",
                description="The address is trimmed and lower-cased before the search.",
                scope=SCOPE_READERS_READ,
                parameters=[
                    {
                        "name": "email",
                        "in": "query",
                        "required": True,
                        "description": "The reader's login e-mail address.",
                        "schema": _EMAIL_SCHEMA,
                    }
                ],
                responses={
                    "200": _ok("Reader", "The reader."),
                    "400": bad_request,
                    "404": _error_response(
                        "No reader has this address (`field` is `email`).", ["reader_not_found"]
                    ),
                },
                rate_limited=True,
            )
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "getOpenApiDocument",
                "summary": "This document",
                "tags": ["meta"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "The OpenAPI document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
    scopes_text = "\n".join(f"- `{scope}`: {text}" for scope, text in SCOPE_DESCRIPTIONS.items())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tollgate content-site API",
            "version": "1.0.0",
            "description": "Entitlement decisions and signed access tokens for the content site, "
            "and reader look-ups for support. Every error has the shape "
            '`{"error": {"code", "message", "field"}}`. Times are ISO-8601 in UTC.\n\n'
            "Scopes:\n\n" + scopes_text,
        },
        "tags": [
            {"name": "content site", "description": "Called by the content site's servers."},
            {"name": "meta", "description": "About the API itself."},
        ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`tg_XXXXXXXX.<secret>`) from the staff area or "
                    "`flask billing api-client create`, sent as `Authorization: Bearer <key>`.",
                }
            },
        },
    }


DOCUMENT: dict[str, Any] = build()
"""The document, built once at import."""

DOCUMENT_JSON: bytes = json.dumps(DOCUMENT, indent=2, sort_keys=False).encode("utf-8")
"""The document as served."""
