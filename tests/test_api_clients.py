"""API clients: keys stored hashed, validated settings, the client cache bound, CLI and staff pages."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from billing import db
from billing.clock import FixedClock
from billing.errors import Conflict, ValidationFailed
from billing.models import ApiClient, AuditLog, StaffRole
from billing.services import api_clients
from billing.services.api_clients import (
    ClientCache,
    InsufficientScope,
    InvalidApiKey,
    authenticate,
    record_use,
)
from tests import factories
from tests.conftest import csrf_token, post_form
from tests.helpers import FakeMonotonic, login

ALL_SCOPES = list(api_clients.SCOPES)


@pytest.fixture
def tick() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def cache(tick: FakeMonotonic) -> ClientCache:
    return ClientCache(ttl=5.0, monotonic=tick)


@pytest.fixture
def statements(app: Flask) -> list[str]:
    seen: list[str] = []
    event.listen(db.engine(), "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


def _create(session: Session, clock: FixedClock, **overrides: object) -> tuple[ApiClient, str]:
    fields: dict[str, object] = {
        "name": "Content site",
        "scopes": ALL_SCOPES,
        "allowed_origins": ["https://news.example.eu"],
        "created_by": None,
        "now": clock.now(),
    }
    fields.update(overrides)
    client, key, _token_key = api_clients.create(session, **fields)  # type: ignore[arg-type]
    session.commit()
    return client, key


# The service -------------------------------------------------------------------------------


def test_a_new_key_is_returned_once_and_only_its_prefix_and_sha256_are_stored(
    session: Session, clock: FixedClock
) -> None:
    client, key = _create(session, clock)

    assert re.fullmatch(r"tg_[A-Za-z0-9_-]{8}\.[A-Za-z0-9_-]{43}", key)
    assert client.key_prefix == key.split(".")[0]
    assert client.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert client.public_id.startswith("cli_")
    assert client.created_at == clock.now()
    stored = session.execute(select(ApiClient.__table__)).one()._asdict()
    assert all(key not in str(value) for value in stored.values())


def test_two_clients_get_different_keys_and_prefixes(session: Session, clock: FixedClock) -> None:
    first, first_key = _create(session, clock)
    second, second_key = _create(session, clock, name="App")

    assert first_key != second_key
    assert first.key_prefix != second.key_prefix


def test_scopes_are_kept_in_their_canonical_order_without_duplicates(
    session: Session, clock: FixedClock
) -> None:
    client, _ = _create(
        session, clock, scopes=["readers:read", " entitlements:read", "readers:read"]
    )

    assert client.scopes == ["entitlements:read", "readers:read"]


@pytest.mark.parametrize(
    ("scopes", "message"),
    [([], "at least one"), (["", " "], "at least one"), (["admin", "tokens:issue"], "admin")],
)
def test_scopes_must_be_known_and_at_least_one(
    session: Session, clock: FixedClock, scopes: list[str], message: str
) -> None:
    with pytest.raises(ValidationFailed, match=message) as raised:
        _create(session, clock, scopes=scopes)
    assert raised.value.field == "scopes"


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_a_name_must_have_1_to_200_characters(
    session: Session, clock: FixedClock, name: str
) -> None:
    with pytest.raises(ValidationFailed) as raised:
        _create(session, clock, name=name)
    assert raised.value.field == "name"


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("https://news.example.eu", "https://news.example.eu"),
        ("HTTPS://News.Example.EU:443", "https://news.example.eu"),
        ("http://localhost:80", "http://localhost"),
        ("http://127.0.0.1:5001", "http://127.0.0.1:5001"),
        ("https://[2001:DB8::1]:8443", "https://[2001:db8::1]:8443"),
        ("  https://news.example.eu/  ", "https://news.example.eu"),
        ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
    ],
)
def test_origins_are_normalised(
    session: Session, clock: FixedClock, given: str, stored: str
) -> None:
    client, _ = _create(session, clock, allowed_origins=[given])

    assert client.allowed_origins == [stored]


@pytest.mark.parametrize(
    "origin",
    [
        "news.example.eu",
        "ftp://news.example.eu",
        "javascript://news.example.eu",
        "https://news.example.eu/path",
        "https://news.example.eu/?q=1",
        "https://news.example.eu#top",
        "https://user:pw@news.example.eu",
        "https://news.example.eu:0",
        "https://news.example.eu:70000",
        "https://news.example.eu:",
        "https://",
        "https://*.example.eu",
        "https://bücher.example",
        "https://news example.eu",
        "https://[not-ipv6]",
        "https://news.example.eu.",
        "//news.example.eu",
    ],
)
def test_anything_but_scheme_host_and_port_is_refused_as_an_origin(
    session: Session, clock: FixedClock, origin: str
) -> None:
    with pytest.raises(ValidationFailed) as raised:
        _create(session, clock, allowed_origins=[origin])
    assert raised.value.field == "allowed_origins"


def test_origins_skip_blank_lines_and_duplicates(session: Session, clock: FixedClock) -> None:
    client, _ = _create(
        session,
        clock,
        allowed_origins=[
            "https://a.example",
            "",
            "  ",
            "HTTPS://A.example:443",
            "http://b.example",
        ],
    )

    assert client.allowed_origins == ["https://a.example", "http://b.example"]


def test_at_most_twenty_origins_are_allowed(session: Session, clock: FixedClock) -> None:
    origins = [f"https://site{n}.example" for n in range(21)]

    with pytest.raises(ValidationFailed) as raised:
        _create(session, clock, allowed_origins=origins)
    assert raised.value.field == "allowed_origins"


def test_a_genuine_key_authenticates_as_its_client(
    session: Session, clock: FixedClock, cache: ClientCache
) -> None:
    client, key = _create(session, clock)

    found = authenticate(session, key, cache=cache)

    assert found.id == client.id
    assert found.public_id == client.public_id
    assert found.scopes == frozenset(ALL_SCOPES)
    assert found.allowed_origins == ("https://news.example.eu",)


@pytest.mark.parametrize("raw", [None, "", "nonsense", "tg_short.secret"])
def test_a_missing_or_malformed_key_is_refused(
    session: Session, cache: ClientCache, raw: str | None
) -> None:
    with pytest.raises(InvalidApiKey) as raised:
        authenticate(session, raw, cache=cache)
    assert raised.value.status == 401
    assert raised.value.code == "invalid_api_key"


def test_a_key_with_a_known_prefix_but_another_secret_is_refused(
    session: Session, clock: FixedClock, cache: ClientCache
) -> None:
    _, key = _create(session, clock)
    prefix, secret = key.split(".")
    forged = f"{prefix}.{secret[::-1]}"

    with pytest.raises(InvalidApiKey):
        authenticate(session, forged, cache=cache)


def test_a_cached_client_is_authenticated_without_the_database(
    session: Session, clock: FixedClock, cache: ClientCache, statements: list[str]
) -> None:
    _, key = _create(session, clock)
    authenticate(session, key, cache=cache)
    statements.clear()

    authenticate(session, key, cache=cache)

    assert statements == []


def test_a_rotated_key_stops_working_at_once_where_it_was_not_cached(
    session: Session, clock: FixedClock, cache: ClientCache
) -> None:
    client, old_key = _create(session, clock)

    new_key = api_clients.rotate(session, client)
    session.commit()

    assert new_key != old_key
    assert client.key_hash == hashlib.sha256(new_key.encode()).hexdigest()
    with pytest.raises(InvalidApiKey):
        authenticate(session, old_key, cache=cache)
    assert authenticate(session, new_key, cache=cache).id == client.id


def test_a_rotated_key_cached_by_another_process_works_for_at_most_five_seconds(
    session: Session, clock: FixedClock, cache: ClientCache, tick: FakeMonotonic
) -> None:
    client, old_key = _create(session, clock)
    authenticate(session, old_key, cache=cache)
    api_clients.rotate(session, client)
    session.commit()

    tick.value += 4.9
    assert authenticate(session, old_key, cache=cache).id == client.id
    tick.value += 0.1
    with pytest.raises(InvalidApiKey):
        authenticate(session, old_key, cache=cache)


def test_a_revoked_key_cached_by_another_process_works_for_at_most_five_seconds(
    session: Session, clock: FixedClock, cache: ClientCache, tick: FakeMonotonic
) -> None:
    client, key = _create(session, clock)
    authenticate(session, key, cache=cache)
    api_clients.revoke(client, now=clock.now())
    session.commit()

    tick.value += 4.9
    assert authenticate(session, key, cache=cache).id == client.id
    tick.value += 0.1
    with pytest.raises(InvalidApiKey):
        authenticate(session, key, cache=cache)


def test_clearing_the_cache_makes_a_revocation_immediate_in_this_process(
    session: Session, clock: FixedClock, cache: ClientCache
) -> None:
    client, key = _create(session, clock)
    authenticate(session, key, cache=cache)
    api_clients.revoke(client, now=clock.now())
    session.commit()

    cache.clear()

    with pytest.raises(InvalidApiKey):
        authenticate(session, key, cache=cache)


def test_a_revoked_client_cannot_be_rotated_or_revoked_again(
    session: Session, clock: FixedClock
) -> None:
    client, _ = _create(session, clock)
    api_clients.revoke(client, now=clock.now())

    with pytest.raises(Conflict):
        api_clients.rotate(session, client)
    with pytest.raises(Conflict):
        api_clients.revoke(client, now=clock.now())
    assert client.revoked_at == clock.now()


def test_a_client_without_the_scope_is_forbidden(
    session: Session, clock: FixedClock, cache: ClientCache
) -> None:
    _, key = _create(session, clock, scopes=["tokens:issue"])
    client = authenticate(session, key, cache=cache)

    api_clients.require_scope(client, "tokens:issue")
    with pytest.raises(InsufficientScope) as raised:
        api_clients.require_scope(client, "entitlements:read")
    assert raised.value.status == 403
    assert raised.value.code == "insufficient_scope"


def _last_used(session: Session, client_id: int) -> object:
    return session.scalar(select(ApiClient.last_used_at).where(ApiClient.id == client_id))


def test_last_used_is_written_at_most_once_a_minute(
    session: Session, clock: FixedClock, cache: ClientCache, statements: list[str]
) -> None:
    _, key = _create(session, clock)
    client = authenticate(session, key, cache=cache)

    assert record_use(session, client, now=clock.now(), cache=cache) is True
    session.commit()
    first = clock.now()
    statements.clear()
    clock.advance(seconds=59)
    assert record_use(session, client, now=clock.now(), cache=cache) is False
    assert statements == []
    assert _last_used(session, client.id) == first

    clock.advance(seconds=1)
    assert record_use(session, client, now=clock.now(), cache=cache) is True
    session.commit()
    assert _last_used(session, client.id) == clock.now()


def test_a_fresh_process_does_not_write_last_used_again_within_the_minute(
    session: Session, clock: FixedClock, tick: FakeMonotonic
) -> None:
    _, key = _create(session, clock)
    first_process = ClientCache(monotonic=tick)
    client = authenticate(session, key, cache=first_process)
    record_use(session, client, now=clock.now(), cache=first_process)
    session.commit()

    clock.advance(seconds=30)
    second_process = ClientCache(monotonic=tick)
    client = authenticate(session, key, cache=second_process)

    assert record_use(session, client, now=clock.now(), cache=second_process) is False


def test_the_list_shows_active_clients_first_then_revoked_ones(
    session: Session, clock: FixedClock
) -> None:
    _create(session, clock, name="Old")
    clock.advance(hours=1)
    revoked, _ = _create(session, clock, name="Revoked", now=clock.now())
    api_clients.revoke(revoked, now=clock.now())
    clock.advance(hours=1)
    _create(session, clock, name="New", now=clock.now())

    assert [c.name for c in api_clients.all_clients(session)] == ["New", "Old", "Revoked"]


# The CLI -----------------------------------------------------------------------------------


def _key_from(output: str) -> str:
    match = re.search(r"tg_[A-Za-z0-9_-]{8}\.[A-Za-z0-9_-]{43}", output)
    assert match, output
    return match.group(0)


def test_the_cli_creates_a_client_and_prints_its_key_once(
    runner: FlaskCliRunner, session: Session
) -> None:
    result = runner.invoke(
        args=[
            "billing",
            "api-client",
            "create",
            "--name",
            "Content site",
            "--scopes",
            "entitlements:read, tokens:issue",
            "--origin",
            "https://news.example.eu",
            "--origin",
            "http://127.0.0.1:5001",
        ]
    )

    assert result.exit_code == 0, result.output
    key = _key_from(result.output)
    client = session.scalars(select(ApiClient)).one()
    assert client.public_id in result.output
    assert client.scopes == ["entitlements:read", "tokens:issue"]
    assert client.allowed_origins == ["https://news.example.eu", "http://127.0.0.1:5001"]
    assert client.key_hash == hashlib.sha256(key.encode()).hexdigest()
    entry = session.scalars(select(AuditLog)).one()
    assert (entry.action, entry.actor_label, entry.target_id) == (
        "api_client.created",
        "cli",
        client.public_id,
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--name", "  ", "--scopes", "tokens:issue"], "--name"),
        (["--name", "Site", "--scopes", "tokens:write"], "--scopes"),
        (["--name", "Site", "--scopes", ","], "--scopes"),
        (["--name", "Site", "--scopes", "tokens:issue", "--origin", "https://x.eu/a"], "--origin"),
    ],
)
def test_the_cli_names_the_option_at_fault(
    runner: FlaskCliRunner, session: Session, args: list[str], option: str
) -> None:
    result = runner.invoke(args=["billing", "api-client", "create", *args])

    assert result.exit_code == 2
    assert option in result.output
    assert session.scalars(select(ApiClient)).all() == []


def test_the_cli_lists_rotates_and_revokes_clients(
    runner: FlaskCliRunner, session: Session, clock: FixedClock, cache: ClientCache
) -> None:
    client, old_key = _create(session, clock)

    listed = runner.invoke(args=["billing", "api-client", "list"])
    assert listed.exit_code == 0
    assert client.public_id in listed.output
    assert client.key_prefix in listed.output
    assert "last_used=never" in listed.output
    assert old_key not in listed.output

    rotated = runner.invoke(args=["billing", "api-client", "rotate", client.public_id])
    assert rotated.exit_code == 0, rotated.output
    new_key = _key_from(rotated.output)
    with pytest.raises(InvalidApiKey):
        authenticate(session, old_key, cache=cache)
    assert authenticate(session, new_key, cache=cache).id == client.id

    revoked = runner.invoke(args=["billing", "api-client", "revoke", client.public_id])
    assert revoked.exit_code == 0, revoked.output
    cache.clear()
    with pytest.raises(InvalidApiKey):
        authenticate(session, new_key, cache=cache)
    actions = session.scalars(select(AuditLog.action).order_by(AuditLog.id)).all()
    assert actions == ["api_client.rotated", "api_client.revoked"]
    assert "revoked" in runner.invoke(args=["billing", "api-client", "list"]).output


@pytest.mark.parametrize("command", ["rotate", "revoke"])
def test_the_cli_refuses_an_unknown_client_id(runner: FlaskCliRunner, command: str) -> None:
    result = runner.invoke(args=["billing", "api-client", command, "cli_nope"])

    assert result.exit_code == 2
    assert "CLIENT_ID" in result.output


def test_the_cli_refuses_to_revoke_a_client_twice(
    runner: FlaskCliRunner, session: Session, clock: FixedClock
) -> None:
    client, _ = _create(session, clock)
    runner.invoke(args=["billing", "api-client", "revoke", client.public_id])

    result = runner.invoke(args=["billing", "api-client", "revoke", client.public_id])

    assert result.exit_code == 2
    assert "already revoked" in result.output


# The staff pages ---------------------------------------------------------------------------


@pytest.fixture
def admin(client: FlaskClient) -> factories.models.Reader:
    person = factories.reader(email="admin@tollgate.example", staff_role=StaffRole.ADMIN)
    login(client, person)
    return person


@pytest.mark.parametrize("role", [StaffRole.NONE, StaffRole.SUPPORT, StaffRole.FINANCE])
def test_only_admins_may_manage_api_clients(
    client: FlaskClient, session: Session, clock: FixedClock, role: StaffRole
) -> None:
    existing, _ = _create(session, clock)
    login(client, factories.reader(staff_role=role))

    assert client.get("/staff/api-clients").status_code == 403
    assert client.get("/staff/api-clients/new").status_code == 403
    for action in ("rotate", "revoke"):
        response = client.post(
            f"/staff/api-clients/{existing.public_id}/{action}",
            data={"csrf_token": csrf_token(client, "/account")},
        )
        assert response.status_code == 403
    assert existing.revoked_at is None


def test_a_guest_is_sent_to_log_in(client: FlaskClient) -> None:
    response = client.get("/staff/api-clients")

    assert response.status_code == 302
    assert response.headers["Location"].split("?")[0].endswith("/login")


def test_an_admin_creates_a_client_and_sees_its_key_once(
    client: FlaskClient, session: Session, admin: factories.models.Reader, cache: ClientCache
) -> None:
    response = post_form(
        client,
        "/staff/api-clients/new",
        {
            "name": "Content site",
            "scopes": ["entitlements:read", "tokens:issue"],  # type: ignore[dict-item]
            "allowed_origins": "https://news.example.eu\r\n\r\nHTTP://Localhost:5001/\r\n",
        },
    )

    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "will not be shown again" in page
    assert response.headers["Cache-Control"] == "no-store"
    key = _key_from(page)
    created = session.scalars(select(ApiClient)).one()
    assert created.name == "Content site"
    assert created.scopes == ["entitlements:read", "tokens:issue"]
    assert created.allowed_origins == ["https://news.example.eu", "http://localhost:5001"]
    assert created.created_by_id == admin.id
    assert authenticate(session, key, cache=cache).id == created.id
    listing = client.get("/staff/api-clients").get_data(as_text=True)
    assert created.key_prefix in listing
    assert key not in listing
    entry = session.scalars(select(AuditLog)).one()
    assert (entry.action, entry.actor_id, entry.target_id) == (
        "api_client.created",
        admin.id,
        created.public_id,
    )


def test_an_invalid_form_is_answered_400_with_the_errors_next_to_the_fields(
    client: FlaskClient, session: Session, admin: factories.models.Reader
) -> None:
    response = post_form(
        client, "/staff/api-clients/new", {"name": "", "allowed_origins": "news.example.eu"}
    )

    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert 'data-field="name"' in page
    assert 'data-field="scopes"' in page
    assert 'data-field="allowed_origins"' in page
    assert session.scalars(select(ApiClient)).all() == []


def test_a_bad_origin_is_shown_next_to_the_origins_field(
    client: FlaskClient, session: Session, admin: factories.models.Reader
) -> None:
    response = post_form(
        client,
        "/staff/api-clients/new",
        {"name": "Site", "scopes": "tokens:issue", "allowed_origins": "https://news.example.eu/x"},
    )

    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert re.search(r'data-field="allowed_origins">[^<]*must not have a path', page)
    assert session.scalars(select(ApiClient)).all() == []


def test_an_unknown_scope_is_refused_by_the_form(
    client: FlaskClient, session: Session, admin: factories.models.Reader
) -> None:
    response = post_form(client, "/staff/api-clients/new", {"name": "Site", "scopes": "everything"})

    assert response.status_code == 400
    assert 'data-field="scopes"' in response.get_data(as_text=True)


def test_the_list_shows_each_clients_details(
    client: FlaskClient, session: Session, clock: FixedClock, admin: factories.models.Reader
) -> None:
    existing, key = _create(session, clock, name="Newsletter", scopes=["readers:read"])
    existing.last_used_at = clock.now()
    session.commit()

    page = client.get("/staff/api-clients").get_data(as_text=True)

    assert f'data-client="{existing.public_id}"' in page
    for text in ("Newsletter", existing.key_prefix, "readers:read", "https://news.example.eu"):
        assert text in page
    assert "2026-11-25 09:00 UTC" in page
    assert key not in page


def test_rotating_shows_the_new_key_once_and_the_old_key_stops_working(
    client: FlaskClient,
    app: Flask,
    session: Session,
    clock: FixedClock,
    admin: factories.models.Reader,
) -> None:
    existing, old_key = _create(session, clock)
    app_cache = api_clients.ClientCache()
    app.extensions["api_client_cache"] = app_cache
    authenticate(session, old_key, cache=app_cache)

    response = client.post(
        f"/staff/api-clients/{existing.public_id}/rotate",
        data={"csrf_token": csrf_token(client, "/staff/api-clients")},
    )

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    new_key = _key_from(response.get_data(as_text=True))
    assert new_key != old_key
    assert len(app_cache) == 0
    with pytest.raises(InvalidApiKey):
        authenticate(session, old_key, cache=app_cache)
    assert authenticate(session, new_key, cache=app_cache).id == existing.id
    entry = session.scalars(select(AuditLog)).one()
    assert (entry.action, entry.target_id) == ("api_client.rotated", existing.public_id)


def test_revoking_stops_the_key_and_is_shown_in_the_list(
    client: FlaskClient, session: Session, clock: FixedClock, admin: factories.models.Reader
) -> None:
    existing, key = _create(session, clock)

    response = client.post(
        f"/staff/api-clients/{existing.public_id}/revoke",
        data={"csrf_token": csrf_token(client, "/staff/api-clients")},
        follow_redirects=True,
    )

    assert response.status_code == 200
    assert "is revoked" in response.get_data(as_text=True)
    session.refresh(existing)
    assert existing.revoked_at == clock.now()
    with pytest.raises(InvalidApiKey):
        authenticate(session, key, cache=ClientCache())
    entry = session.scalars(select(AuditLog)).one()
    assert (entry.action, entry.actor_id) == ("api_client.revoked", admin.id)


def test_rotating_a_revoked_client_is_refused_with_a_message(
    client: FlaskClient, session: Session, clock: FixedClock, admin: factories.models.Reader
) -> None:
    existing, _ = _create(session, clock)
    api_clients.revoke(existing, now=clock.now())
    session.commit()
    token = csrf_token(client, "/staff/api-clients/new")

    response = client.post(
        f"/staff/api-clients/{existing.public_id}/rotate",
        data={"csrf_token": token},
        follow_redirects=True,
    )

    assert "revoked" in response.get_data(as_text=True)
    assert session.scalars(select(AuditLog)).all() == []


def test_an_unknown_client_is_a_404(client: FlaskClient, admin: factories.models.Reader) -> None:
    token = csrf_token(client, "/staff/api-clients/new")

    response = client.post("/staff/api-clients/cli_nope/revoke", data={"csrf_token": token})

    assert response.status_code == 404


def test_the_key_is_not_kept_after_the_cache_ttl_expires(
    session: Session, clock: FixedClock, cache: ClientCache, tick: FakeMonotonic
) -> None:
    _, key = _create(session, clock)
    authenticate(session, key, cache=cache)
    tick.value += timedelta(seconds=5).total_seconds()

    assert cache.get(api_clients.hash_key(key)) is None
