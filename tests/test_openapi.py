"""The OpenAPI document tells the truth: schemathesis calls every operation and checks the answers."""

from __future__ import annotations

import re
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.services import api_clients
from billing.services.entitlements import Reason
from billing.views.openapi import DOCUMENT
from tests import factories

EXAMPLE_READER_ID = "rdr_3kTMdx0aQm1bZc4p"
"""The reader id the document gives as an example; a reader with it exists during the run."""
EXAMPLE_EMAIL = "reader@example.org"

load_all_checks()
ALL_CHECKS = list(CHECKS.get_all())
"""Every check schemathesis has, as ``schemathesis run --checks all`` runs them."""


@pytest.fixture
def api_key(session: Session, clock: FixedClock) -> str:
    """A key with every scope, and readers for the document's examples to find."""
    factories.TrialFactory(
        reader=factories.reader(public_id=EXAMPLE_READER_ID, email=EXAMPLE_EMAIL)
    )
    _, key, _token_key = api_clients.create(
        session,
        name="schemathesis",
        scopes=api_clients.SCOPES,
        created_by=None,
        now=clock.now(),
    )
    session.commit()
    return key


schema = schemathesis.openapi.from_dict(DOCUMENT)
"""The document as built; ``test_the_app_serves_the_document`` checks the app serves this one."""


def _issued_token(client: FlaskClient, api_key: str) -> str:
    response = client.post(
        "/api/v1/tokens",
        json={"reader_id": EXAMPLE_READER_ID},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return str(response.get_json()["token"])


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_operation_answers_as_documented(
    case: Any, app: Flask, client: FlaskClient, api_key: str
) -> None:
    # A token is only valid when Tollgate signed it, which no schema can say: the valid cases get
    # a real one (the invalid ones keep theirs, and must be refused).
    if (
        case.operation.label == "POST /api/v1/entitlement/check"
        and case.meta is not None
        and case.meta.generation.mode.is_positive
        and isinstance(case.body, dict)
        and "token" in case.body
    ):
        case.body = {"token": _issued_token(client, api_key)}
    # Some checks send further requests of their own (without the key, with another method):
    # they go to the same app.
    case.operation.schema.app = app
    case.call_and_validate(
        app=app, headers={"Authorization": f"Bearer {api_key}"}, checks=ALL_CHECKS
    )


def test_the_app_serves_the_document(client: FlaskClient) -> None:
    response = client.get("/api/v1/openapi.json")

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == DOCUMENT


def _documented() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in DOCUMENT["paths"].items()
        for method in operations
    }


def test_every_api_route_is_documented_and_every_documented_path_exists(app: Flask) -> None:
    routes = {
        (method, "/api/v1" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule))
        for rule in app.extensions["api_app"].url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }

    assert routes == _documented()


def test_the_reasons_are_documented_as_the_closed_enum() -> None:
    reason = DOCUMENT["components"]["schemas"]["Reason"]

    assert reason["enum"] == [r.value for r in Reason]
    for value in reason["enum"]:
        assert f"`{value}`" in reason["description"]


def test_every_authenticated_operation_documents_the_error_answers() -> None:
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            if operation.get("security") == []:
                continue
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
            assert operation["security"] == [{"bearerAuth": []}]


def test_the_document_loads_as_openapi_3_1_with_every_operation() -> None:
    labels = {result.ok().label for result in schema.get_all_operations()}

    assert labels == {f"{method} {path}" for method, path in _documented()}
