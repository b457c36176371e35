"""Every route of both apps, fed generated input: nothing answers 5xx, every error has its shape.

For each rule of the URL map (the pages and the API under ``/api/v1``), hypothesis sends every
method the rule takes with generated path parameters, query strings and bodies: form fields,
JSON (deeply nested too), and raw bytes under odd content types; text is drawn from all of
Unicode plus NUL bytes and lone surrogates. The caller is a logged-in staff admin holding an API
key with every scope, so the guards let the input through to the views. CSRF and rate limits are
off here (each has its own tests), so the generated input reaches the views themselves.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session
from werkzeug.routing import IntegerConverter, Rule

from billing import create_app
from billing.clock import FixedClock
from billing.models import Reader, StaffRole
from billing.services import api_clients
from tests import factories
from tests.conftest import TEST_SECRET
from tests.helpers import login


def _rules() -> list[tuple[str, Rule]]:
    app = create_app({"DATABASE_URL": "sqlite://", "SECRET_KEYS": [TEST_SECRET]})
    pages = [("", rule) for rule in app.url_map.iter_rules()]
    api = [("/api/v1", rule) for rule in app.extensions["api_app"].url_map.iter_rules()]
    return pages + api


RULES = _rules()
"""Every rule of both URL maps, with the prefix it is served under."""

BAD_CHARACTERS = st.sampled_from(["\x00", "\ud800", "\udfff", "\ufffd", "/", "%", "\\", "\n"])
TEXT = st.one_of(
    st.lists(st.one_of(st.text(max_size=5), BAD_CHARACTERS), min_size=1, max_size=8).map("".join),
    st.sampled_from(["\x00", "rdr_\x00", "a\x00@example.org", "\ud800", "x\udc00y"]),
    st.text(max_size=40),
    st.sampled_from(["", "rdr_x", "cli_x", "a@example.org", "192.0.2.1", "fe80::1%eth0", "-1"]),
)
KNOWN_FIELDS = [
    "email", "password", "name", "country", "q", "page", "to", "client", "return_to",
    "next", "token", "reader_id", "ip", "plan", "scopes", "allowed_origins",
    "new_email", "current_password", "new_password", "password_confirm", "prompt", "sent",
]  # fmt: skip
"""Every name a view of ours reads from a query string, a form or a JSON body."""
FIELD_NAMES = st.one_of(st.sampled_from(KNOWN_FIELDS), TEXT)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(FIELD_NAMES, children, max_size=3)
    ),
    max_leaves=8,
)
DEEP = st.integers(min_value=30, max_value=5_000).map(lambda n: "[" * n + "]" * n)


def _encode(text: str) -> str:
    """``text`` percent-encoded as UTF-8, lone surrogates included (as an attacker can send)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _pairs(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{_encode(name)}={_encode(value)}" for name, value in pairs)


PAIRS = st.one_of(
    st.lists(st.tuples(FIELD_NAMES, TEXT), max_size=5),
    # every name a view reads at once, so each example reaches whichever the route reads
    st.tuples(*(st.tuples(st.just(name), TEXT) for name in KNOWN_FIELDS)).map(list),
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A body and its content type: a form, JSON, deep JSON, or raw bytes under any type."""
    kind = draw(st.sampled_from(["form", "json", "deep", "raw", "none"]))
    if kind == "form":
        return _pairs(draw(PAIRS)).encode("ascii"), "application/x-www-form-urlencoded"
    if kind == "json":
        return json.dumps(draw(JSON)).encode("utf-8"), "application/json"
    if kind == "deep":
        return ('{"reader_id": ' + draw(DEEP) + "}").encode(), "application/json"
    if kind == "raw":
        content_type = draw(
            st.sampled_from(
                [
                    None,
                    "text/plain",
                    "application/json; charset=utf-16",
                    "garbage",
                    "multipart/form-data",
                ]
            )
        )
        return draw(st.binary(max_size=200)), content_type
    return b"", None


ROW_IDS = st.integers(min_value=0, max_value=2**80).map(str)
"""Numbers for ``<int:...>`` ids, far beyond any row's (SQLite cannot bind one over 2**63)."""


def _argument(rule: Rule, name: str) -> st.SearchStrategy[str]:
    """What to put in a rule's path argument: numbers (huge ones too) or any text for an id."""
    if isinstance(rule._converters.get(name), IntegerConverter):
        return ROW_IDS | TEXT
    return TEXT


def _path(prefix: str, rule: Rule, values: dict[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        return _encode(values[match.group(1)])

    return prefix + re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", fill, rule.rule)


pytestmark = pytest.mark.usefixtures("stripe")


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """CSRF and rate limits off, before the app is made of these settings (a fixture asking for
    them after ``app`` changed nothing: the fuzzer's POSTs stopped at the CSRF check)."""
    app_config["WTF_CSRF_ENABLED"] = False
    app_config["RATELIMIT_ENABLED"] = False
    return app_config


def test_the_fuzzed_app_takes_no_csrf_token_and_sets_no_rate_limit(app: Flask) -> None:
    assert app.config["WTF_CSRF_ENABLED"] is False
    assert app.config["RATELIMIT_ENABLED"] is False


@pytest.fixture
def admin(session: Session) -> Reader:
    reader = factories.reader(email="admin@tollgate.example", staff_role=StaffRole.ADMIN)
    session.commit()
    return reader


@pytest.fixture
def api_key(session: Session, clock: FixedClock) -> str:
    _, key, _token_key = api_clients.create(
        session, name="Fuzz", scopes=api_clients.SCOPES, created_by=None, now=clock.now()
    )
    session.commit()
    return key


def _assert_error_shape(path: str, status: int, response: Any) -> None:
    if path.startswith(("/api/", "/webhooks/")):
        body = response.get_json(silent=True)
        assert isinstance(body, dict) and set(body) == {"error"}, response.get_data()[:300]
        assert set(body["error"]) == {"code", "message", "field"}
    else:
        assert response.mimetype == "text/html", (status, response.mimetype)
        assert 'class="site-header"' in response.get_data(as_text=True), status


@pytest.mark.parametrize(
    ("prefix", "rule"), RULES, ids=[f"{prefix}{rule.rule}" for prefix, rule in RULES]
)
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_generated_input_makes_a_5xx_and_every_error_has_its_shape(
    prefix: str,
    rule: Rule,
    data: st.DataObject,
    app: Flask,
    client: FlaskClient,
    admin: Reader,
    api_key: str,
) -> None:
    method = data.draw(st.sampled_from(sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})))
    values = {name: data.draw(_argument(rule, name), label=name) for name in rule.arguments}
    path = _path(prefix, rule, values)
    query = _pairs(data.draw(PAIRS, label="query"))
    body, content_type = data.draw(bodies(), label="body") if method != "GET" else (b"", None)
    login(client, admin)
    headers = {"Authorization": f"Bearer {api_key}"}
    if content_type is not None:
        headers["Content-Type"] = content_type

    response = client.open(path, method=method, query_string=query, data=body, headers=headers)

    assert response.status_code < 500, (method, path, query, body[:200], response.get_data()[:500])
    if response.status_code >= 400:
        _assert_error_shape(path, response.status_code, response)


INT_RULES = [
    (prefix, rule)
    for prefix, rule in RULES
    if any(isinstance(c, IntegerConverter) for c in rule._converters.values())
]


@pytest.mark.parametrize(
    ("prefix", "rule"), INT_RULES, ids=[f"{prefix}{rule.rule}" for prefix, rule in INT_RULES]
)
def test_an_id_no_row_can_have_is_not_found_before_it_reaches_the_database(
    prefix: str, rule: Rule, client: FlaskClient, admin: Reader, session: Session
) -> None:
    """Ids are 32-bit; SQLite cannot even bind a number over 2**63 (it raised OverflowError)."""
    group = factories.group_with_seats(1)
    session.commit()
    values = {
        name: str(2**64) if isinstance(rule._converters[name], IntegerConverter) else "x"
        for name in rule.arguments
    }
    values |= {"public_id": group.public_id} if "public_id" in values else {}
    login(client, admin)
    method = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})[0]

    response = client.open(_path(prefix, rule, values), method=method)

    assert response.status_code == 404, (method, rule.rule, response.get_data()[:300])
