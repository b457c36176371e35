"""No input makes a 500: each class of bad input gets its status, in the one error shape.

Every case found answering 500 (a NUL byte reaching PostgreSQL, JSON nested too deeply) is here,
and the suite runs it on SQLite and on PostgreSQL. Pages answer in the site's own layout, the API
in ``{"error": {"code", "message", "field"}}``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from flask import Flask, abort
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from billing.clock import FixedClock
from billing.inputs import MAX_JSON_DEPTH
from billing.models import ApiClient, Reader, StaffRole
from billing.services import api_clients
from tests import factories
from tests.conftest import csrf_token, post_form
from tests.helpers import login

NUL = "\x00"
SURROGATE = "\ud800"


@pytest.fixture
def api_key(session: Session, clock: FixedClock) -> str:
    """A key with every scope."""
    _, key, _token_key = api_clients.create(
        session,
        name="Content site",
        scopes=api_clients.SCOPES,
        allowed_origins=["https://news.example.eu"],
        created_by=None,
        now=clock.now(),
    )
    session.commit()
    return key


@pytest.fixture
def admin(client: FlaskClient) -> Reader:
    """A logged-in staff admin."""
    member = factories.reader(email="admin@tollgate.example", staff_role=StaffRole.ADMIN)
    login(client, member)
    return member


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_json_error(response: TestResponse, status: int, field: str | None = None) -> None:
    """``response`` is ``status`` in the API's one error shape, naming ``field``."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "field"}
    assert isinstance(body["error"]["code"], str) and body["error"]["message"]
    assert body["error"]["field"] == field


def assert_page_error(response: TestResponse, status: int, *words: str) -> str:
    """``response`` is ``status`` as a page in the site's layout, with a way on and ``words``."""
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert 'class="site-header"' in page
    assert f'data-status="{status}"' in page
    assert 'href="/"' in page  # a way forward: at least the home page
    for word in words:
        assert word in page
    return page


def count(session: Session, model: Any) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(model)) or 0


# --- NUL bytes and lone surrogates: 400 naming the field ------------------------------------


def test_a_nul_byte_in_the_signup_name_is_a_400_naming_the_field_and_creates_nothing(
    client: FlaskClient, session: Session
) -> None:
    data = {
        "email": "new@example.org",
        "password": "a long enough password",
        "name": f"Ada{NUL}Lovelace",
        "country": "FR",
    }
    response = post_form(client, "/signup", data)

    assert_page_error(response, 400, "“name” contains a NUL byte")
    assert count(session, Reader) == 0


def test_a_nul_byte_in_the_access_client_is_refused_on_the_bad_link_page(
    client: FlaskClient,
) -> None:
    response = client.get("/access?client=%00&return_to=https://news.example.eu/a")

    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert 'data-problem="bad_access_link"' in page
    assert "“client” contains a NUL byte" in page


def test_a_nul_byte_in_the_staff_search_is_a_400_naming_the_field(
    client: FlaskClient, admin: Reader
) -> None:
    response = client.get("/staff/readers?q=ada%00")

    assert_page_error(response, 400, "“q” contains a NUL byte")


def test_a_nul_byte_in_a_new_api_clients_name_is_a_400_and_creates_no_client(
    client: FlaskClient, admin: Reader, session: Session
) -> None:
    data = {"name": f"Site{NUL}", "scopes": "entitlements:read", "allowed_origins": ""}
    response = post_form(client, "/staff/api-clients/new", data)

    assert_page_error(response, 400, "“name” contains a NUL byte")
    assert count(session, ApiClient) == 0


@pytest.mark.parametrize("action", ["rotate", "revoke"])
def test_a_nul_byte_in_an_api_client_id_is_a_400_naming_the_field(
    client: FlaskClient, admin: Reader, action: str
) -> None:
    token = csrf_token(client, "/staff/api-clients")
    response = client.post(f"/staff/api-clients/cli_%00/{action}", data={"csrf_token": token})

    assert_page_error(response, 400, "“public_id” contains a NUL byte")


def test_a_nul_byte_in_the_outbox_filter_is_a_400_naming_the_field(client: FlaskClient) -> None:
    response = client.get("/dev/outbox?to=a%00@example.org")

    assert_page_error(response, 400, "“to” contains a NUL byte")


def test_a_nul_byte_in_a_reader_id_of_the_api_is_a_400_naming_the_field(
    client: FlaskClient, api_key: str
) -> None:
    response = client.get("/api/v1/readers/%00", headers=auth(api_key))

    assert_json_error(response, 400, "reader_id")
    assert "NUL" in response.get_json()["error"]["message"]


def test_a_nul_byte_in_a_query_parameter_of_the_api_is_a_400_naming_it(
    client: FlaskClient, api_key: str
) -> None:
    response = client.get("/api/v1/readers?email=a%00@example.org", headers=auth(api_key))

    assert_json_error(response, 400, "email")


@pytest.mark.parametrize("text", [NUL, SURROGATE, f"rdr_{SURROGATE}x"])
def test_a_nul_byte_or_a_lone_surrogate_in_a_json_string_is_a_400_naming_the_member(
    client: FlaskClient, api_key: str, text: str
) -> None:
    body = json.dumps({"reader_id": text})  # ensure_ascii: the surrogate travels as \\ud800
    response = client.post(
        "/api/v1/tokens", data=body, content_type="application/json", headers=auth(api_key)
    )

    assert_json_error(response, 400, "reader_id")


def test_a_lone_surrogate_in_a_json_member_name_is_a_400(client: FlaskClient, api_key: str) -> None:
    response = client.post(
        "/api/v1/entitlement/check",
        data='{"\\udc00": "x"}',
        content_type="application/json",
        headers=auth(api_key),
    )

    assert_json_error(response, 400, None)


def test_an_encoded_surrogate_in_a_form_field_stays_percent_encoded_not_a_500(
    client: FlaskClient, session: Session
) -> None:
    token = csrf_token(client, "/signup")
    response = client.post(
        "/signup",
        data=f"csrf_token={token}&email=new%40example.org&password=a+long+enough+password"
        "&name=Ada%ED%A0%80&country=FR",
        content_type="application/x-www-form-urlencoded",
    )

    assert response.status_code == 302
    reader = session.scalars(select(Reader)).one()
    assert reader.name == "Ada%ED%A0%80"  # bytes that are not UTF-8 stay as they were sent


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/entitlement?ip=192.0.2.1&ipp=1", "ipp"),
        ("/api/v1/readers?email=a@example.org&=x", None),
        ("/api/v1/readers/rdr_x/entitlement?debug=1", "debug"),
    ],
)
def test_an_unknown_query_parameter_of_the_api_is_a_400_naming_it(
    client: FlaskClient, api_key: str, path: str, field: str | None
) -> None:
    response = client.get(path, headers=auth(api_key))

    assert_json_error(response, 400, field)
    assert "Unknown query parameter" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/entitlement?ip=192.0.2.1&ip=203.0.113.5", "ip"),
        ("/api/v1/entitlement?ip=192.0.2.1&ip=192.0.2.1", "ip"),
        ("/api/v1/readers?email=a@example.org&email=b@example.org", "email"),
    ],
)
def test_a_query_parameter_of_the_api_given_twice_is_a_400_naming_it(
    client: FlaskClient, api_key: str, path: str, field: str
) -> None:
    response = client.get(path, headers=auth(api_key))

    assert_json_error(response, 400, field)
    assert "once" in response.get_json()["error"]["message"]


# --- JSON: depth, encoding, numbers ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/tokens", "/api/v1/entitlement/check"])
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1_000, 100_000])
def test_json_nested_too_deeply_is_a_400(
    client: FlaskClient, api_key: str, path: str, depth: int
) -> None:
    body = '{"reader_id": ' + "[" * depth + "]" * depth + "}"
    response = client.post(path, data=body, content_type="application/json", headers=auth(api_key))

    assert_json_error(response, 400, None)
    assert "deep" in response.get_json()["error"]["message"]


def test_json_as_deep_as_the_limit_is_read(client: FlaskClient, api_key: str) -> None:
    nested = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    response = client.post(
        "/api/v1/tokens",
        data='{"reader_id": ' + nested + "}",
        content_type="application/json",
        headers=auth(api_key),
    )

    assert_json_error(response, 400, "reader_id")  # read, then refused for not being a string


def test_brackets_inside_json_strings_do_not_count_as_depth(
    client: FlaskClient, api_key: str
) -> None:
    response = client.post(
        "/api/v1/tokens",
        json={"reader_id": "[" * 100 + '\\"' + "{" * 100},
        headers=auth(api_key),
    )

    assert_json_error(response, 404, "reader_id")


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(client: FlaskClient, api_key: str, number: str) -> None:
    response = client.post(
        "/api/v1/entitlement/check",
        data='{"ip": ' + number + "}",
        content_type="application/json",
        headers=auth(api_key),
    )

    assert_json_error(response, 400, None)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-16-le"])
def test_a_json_body_in_utf_16_or_32_is_a_400(
    client: FlaskClient, api_key: str, encoding: str
) -> None:
    response = client.post(
        "/api/v1/entitlement/check",
        data='{"ip": "192.0.2.1"}'.encode(encoding),
        content_type="application/json",
        headers=auth(api_key),
    )

    assert_json_error(response, 400, None)


# --- content types: 415 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "garbage",
        "application/json; charset=utf-16",
        "application/json; charset=UTF-32",
        "application/json-patch+json",
    ],
)
def test_the_api_reads_only_application_json_in_utf_8(
    client: FlaskClient, api_key: str, content_type: str | None
) -> None:
    headers = auth(api_key)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = client.post("/api/v1/entitlement/check", data='{"ip": "192.0.2.1"}', headers=headers)

    assert_json_error(response, 415, "Content-Type")


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=UTF-8"])
def test_application_json_with_or_without_charset_utf_8_is_read(
    client: FlaskClient, api_key: str, content_type: str
) -> None:
    response = client.post(
        "/api/v1/entitlement/check",
        data='{"ip": "192.0.2.1"}',
        headers={**auth(api_key), "Content-Type": content_type},
    )

    assert response.status_code == 200
    assert response.get_json()["granted"] is False


@pytest.mark.parametrize("body", ['{"email": "a@example.org"}', "[1]", "true", "[" * 5000])
def test_a_json_body_sent_to_a_page_is_a_415_page_and_reads_no_form(
    client: FlaskClient, session: Session, body: str
) -> None:
    """Flask-WTF would read it as the form (a list or ``true`` broke it, deep nesting too): with
    the CSRF token in its header, as the pages' own scripts send it, it got that far."""
    headers = {"Content-Type": "application/json", "X-CSRFToken": csrf_token(client, "/signup")}
    response = client.post("/signup", data=body, headers=headers)

    assert_page_error(response, 415, "application/x-www-form-urlencoded")
    assert count(session, Reader) == 0


# --- sizes: 413 and 414 ---------------------------------------------------------------------


@pytest.fixture
def small_limits(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config["MAX_CONTENT_LENGTH"] = 1024
    app_config["MAX_URL_LENGTH"] = 200
    return app_config


def test_an_api_body_over_the_limit_is_a_413_in_the_error_shape(
    small_limits: dict[str, Any], client: FlaskClient, api_key: str
) -> None:
    body = json.dumps({"reader_id": "rdr_" + "a" * 2000})
    response = client.post(
        "/api/v1/tokens", data=body, content_type="application/json", headers=auth(api_key)
    )

    assert_json_error(response, 413, None)
    assert "1 KB" in response.get_json()["error"]["message"]


def test_a_chunked_api_body_over_the_limit_is_a_413(
    small_limits: dict[str, Any], client: FlaskClient, api_key: str
) -> None:
    response = client.post(
        "/api/v1/tokens",
        input_stream=None,
        data=b'{"reader_id": "' + b"a" * 4000 + b'"}',
        headers={**auth(api_key), "Transfer-Encoding": "chunked"},
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn says of a chunked body
    )

    assert_json_error(response, 413, None)


def test_a_form_over_the_limit_is_a_413_page(
    small_limits: dict[str, Any], client: FlaskClient, session: Session
) -> None:
    data = {"email": "new@example.org", "password": "x" * 2000, "name": "Ada", "country": "FR"}
    response = post_form(client, "/signup", data)

    assert_page_error(response, 413, "1 KB", "Go back")
    assert count(session, Reader) == 0


def test_a_webhook_body_over_the_general_limit_is_a_413_in_the_error_shape(
    small_limits: dict[str, Any], client: FlaskClient
) -> None:
    response = client.post(
        "/webhooks/stripe", data=b"{" + b" " * 4000 + b"}", content_type="application/json"
    )

    assert_json_error(response, 413, None)


def test_an_api_address_over_the_limit_is_a_414_in_the_error_shape(
    small_limits: dict[str, Any], client: FlaskClient, api_key: str
) -> None:
    response = client.get("/api/v1/readers?email=" + "a" * 300, headers=auth(api_key))

    assert_json_error(response, 414, None)


def test_a_page_address_over_the_limit_is_a_414_page(
    small_limits: dict[str, Any], client: FlaskClient
) -> None:
    response = client.get("/login?next=/" + "a" * 300)

    assert_page_error(response, 414)


# --- the ip parameter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip",
    [
        "fe80::1%eth0",
        "fe80::1%" + "a" * 3000,
        "fe80::1%<script>",
        "fe80::1%\x00",
        " 192.0.2.1",
        "192.0.2.1 ",
        "192.0.2.1:80",
        "192.0.2.0/24",
        "[2001:db8::1]",
        "1" * 46,
        "",
    ],
)
def test_an_ip_that_is_not_a_plain_address_is_a_400_naming_ip(
    client: FlaskClient, api_key: str, ip: str
) -> None:
    response = client.post("/api/v1/entitlement/check", json={"ip": ip}, headers=auth(api_key))

    assert_json_error(response, 400, "ip")


@pytest.mark.parametrize("ip", ["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1"])
def test_a_plain_ipv4_or_ipv6_address_is_read(client: FlaskClient, api_key: str, ip: str) -> None:
    response = client.get(f"/api/v1/entitlement?ip={ip}", headers=auth(api_key))

    assert response.status_code == 200


# --- every status under /api/v1 in the error shape ------------------------------------------


def test_an_unknown_api_path_is_a_404_in_the_error_shape(client: FlaskClient, api_key: str) -> None:
    assert_json_error(client.get("/api/v1/nothing-here", headers=auth(api_key)), 404)
    assert_json_error(client.get("/api/v1", headers=auth(api_key)), 404)


def test_a_method_the_api_path_does_not_take_is_a_405_with_allow(
    client: FlaskClient, api_key: str
) -> None:
    response = client.delete("/api/v1/tokens", headers=auth(api_key))

    assert_json_error(response, 405)
    assert "POST" in response.headers["Allow"]
    assert "DELETE" not in response.headers["Allow"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/readers//entitlement",
        "/api/v1/readers/%2F/entitlement",
        "/api/v1//readers/rdr_x/entitlement",
    ],
)
def test_doubled_or_encoded_slashes_are_not_redirected_to_another_operation(
    client: FlaskClient, api_key: str, path: str
) -> None:
    response = client.get(path, headers=auth(api_key))

    assert response.status_code == 404
    assert "Location" not in response.headers
    assert response.get_json()["error"]["code"] in {"not_found", "reader_not_found"}


def test_a_redirect_under_the_api_is_in_the_error_shape(app: Flask, client: FlaskClient) -> None:
    api_app = app.extensions["api_app"]
    api_app.add_url_rule("/with-slash/", "with_slash", lambda: "never")

    response = client.get("/api/v1/with-slash")

    assert response.status_code == 308
    assert response.headers["Location"].endswith("/api/v1/with-slash/")
    assert_json_error(response, 308)


def test_too_many_token_issues_and_look_ups_are_a_429_with_retry_after(
    app: Flask, client: FlaskClient, api_key: str
) -> None:
    app.config["RATELIMIT_API"] = "1 per minute"
    client.get("/api/v1/readers?email=a@example.org", headers=auth(api_key))

    response = client.get("/api/v1/readers?email=a@example.org", headers=auth(api_key))

    assert_json_error(response, 429)
    assert 1 <= int(response.headers["Retry-After"]) <= 61


@pytest.fixture
def failing(app_config: dict[str, Any]) -> dict[str, Any]:
    """Unexpected errors are answered, not raised into the test (as in production)."""
    app_config["PROPAGATE_EXCEPTIONS"] = False
    return app_config


def _explode() -> str:
    raise RuntimeError("a bug")


def test_an_unexpected_api_error_is_a_500_in_the_error_shape(
    failing: dict[str, Any], app: Flask, client: FlaskClient
) -> None:
    app.extensions["api_app"].add_url_rule("/explode", "explode", _explode)

    response = client.get("/api/v1/explode")

    assert_json_error(response, 500)
    assert "a bug" not in response.get_data(as_text=True)


# --- every page status in the site's layout -------------------------------------------------


def test_an_unknown_page_is_a_404_in_the_layout(client: FlaskClient) -> None:
    assert_page_error(client.get("/no-such-page"), 404, "There is nothing at this address.")


def test_a_staff_page_for_a_reader_is_a_403_in_the_layout(client: FlaskClient) -> None:
    login(client, factories.reader(email="reader@example.org"))

    assert_page_error(client.get("/staff/readers"), 403, "reader@example.org", "log in")


def test_a_method_a_page_does_not_take_is_a_405_in_the_layout_linking_to_the_page(
    client: FlaskClient,
) -> None:
    response = client.put("/login")

    assert_page_error(response, 405, "PUT", 'href="/login"')
    assert "GET" in response.headers["Allow"]


def test_a_form_without_its_csrf_token_is_a_400_in_the_layout(client: FlaskClient) -> None:
    assert_page_error(client.post("/login", data={}), 400, "This form has expired", "Go back")


def test_too_many_log_ins_are_a_429_page_saying_when_and_linking_to_password_reset(
    app: Flask, client: FlaskClient
) -> None:
    app.config["RATELIMIT_LOGIN"] = "1 per minute"
    attempt = {"email": "someone@example.org", "password": "not the password"}
    post_form(client, "/login", attempt)

    response = post_form(client, "/login", attempt)

    page = assert_page_error(response, 429, "Try again in", 'href="/password/reset"')
    wait = int(response.headers["Retry-After"])
    said = re.search(r"Try again in (\d+) seconds?\.", page)
    assert said is not None
    assert 1 <= wait <= 61
    assert abs(int(said.group(1)) - wait) <= 1  # read a moment apart


def test_an_unexpected_page_error_is_a_500_in_the_layout(
    failing: dict[str, Any], app: Flask, client: FlaskClient
) -> None:
    app.add_url_rule("/explode", "explode", _explode)

    response = client.get("/explode")

    assert_page_error(response, 500, "nothing was saved")
    assert "a bug" not in response.get_data(as_text=True)


def test_a_page_failing_after_the_database_refused_a_write_still_gets_the_layout(
    failing: dict[str, Any], app: Flask, client: FlaskClient, session: Session
) -> None:
    from billing import db

    def write_twice() -> str:
        reader = factories.ReaderFactory.build(email="twin@example.org")
        twin = factories.ReaderFactory.build(email="twin@example.org")
        request_session = db.session()
        request_session.add_all([reader, twin])
        request_session.flush()  # the unique address fails: the transaction is now unusable
        return "never"

    app.add_url_rule("/write-twice", "write_twice", write_twice)
    login(client, factories.reader(email="someone@example.org"))

    response = client.get("/write-twice")

    assert_page_error(response, 500, "nothing was saved", "Your account")
    assert count(session, Reader) == 1


def test_an_aborted_page_keeps_its_own_message(app: Flask, client: FlaskClient) -> None:
    app.add_url_rule("/gone", "gone", lambda: abort(404, "This reader was deleted."))

    assert_page_error(client.get("/gone"), 404, "This reader was deleted.")


def test_a_json_client_of_a_page_gets_the_error_shape(client: FlaskClient) -> None:
    response = client.get("/no-such-page", headers={"Accept": "application/json"})

    assert_json_error(response, 404)


@pytest.mark.parametrize("seats", ["9" * 400, "-" + "9" * 30, "1" * 10])
def test_a_seat_count_with_hundreds_of_digits_is_a_400_naming_seats_not_a_500(
    client: FlaskClient, session: Session, seats: str
) -> None:
    admin = factories.reader(email="boss@ministry.example")
    group = factories.group_with_seats(5, admin=admin)
    session.commit()
    login(client, admin)

    response = post_form(client, f"/groups/{group.public_id}/seats", {"seats": seats})

    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert 'id="seats-error"' in page and "at most 9 digits" in page


@pytest.mark.parametrize("seats", ["0", "100001"])
def test_a_seat_count_out_of_range_is_a_400_saying_what_is_allowed(
    client: FlaskClient, session: Session, seats: str
) -> None:
    admin = factories.reader(email="boss@ministry.example")
    group = factories.group_with_seats(5, admin=admin)
    session.commit()
    login(client, admin)

    response = post_form(client, f"/groups/{group.public_id}/seats", {"seats": seats})

    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert 'id="seats-error"' in page and "Give a number of seats from 1 to 100,000." in page
