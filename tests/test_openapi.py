"""The OpenAPI document tells the truth: schemathesis calls every operation and checks the answers."""

from __future__ import annotations

import re
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.services import api_clients
from billing.services.entitlements import Reason
from billing.views.openapi import DOCUMENT
from tests import factories

EXAMPLE_READER_ID = "rdr_3kTMdx0aQm1bZc4p"
"""The reader id the document gives as an example; a reader with it exists during the run."""
EXAMPLE_EMAIL = "reader@example.org"

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


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


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_operation_answers_as_documented(case: Any, app: Flask, api_key: str) -> None:
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {api_key}"}, checks=CHECKS)


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
