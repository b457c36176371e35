"""Each API client's token keys: one purpose, stored wrapped, rotated with overlap, revoked.

The separation tests come first: what a content site holds (its token key) opens nothing else in
Tollgate, and Tollgate's ``SECRET_KEYS`` sign no token a site accepts. Then the life of a key on
the fake clock, the CLI and the staff pages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from flask.testing import FlaskClient, FlaskCliRunner
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.errors import Conflict, ValidationFailed
from billing.models import ApiClient, AuditLog, StaffRole, TokenKey, TokenKeyState
from billing.services import accounts, api_clients, legacy_tokens, token_keys, tokens
from billing.services.accounts import InvalidLink
from billing.services.token_keys import KeyWrapper, NoTokenKey, TokenKeyUnavailable
from billing.services.tokens import TokenInvalid, TokenSigner
from tests import factories
from tests.conftest import START, csrf_token, post_form
from tests.helpers import login

KEY_TEXT = re.compile(r"tk_[A-Za-z0-9_-]{8}\.[A-Za-z0-9_-]{43}")


def wrapper(app: Flask) -> KeyWrapper:
    """The app's key wrapper."""
    return app.extensions["token_key_wrapper"]  # type: ignore[no-any-return]


@pytest.fixture
def created(
    app: Flask, session: Session, clock: FixedClock
) -> tuple[ApiClient, str, tokens.TokenKey]:
    """A client just created: it, its API key and its first token key (what the site holds)."""
    client, key, token_key = api_clients.create(
        session,
        name="Content site",
        scopes=list(api_clients.SCOPES),
        allowed_origins=["https://news.example.eu"],
        created_by=None,
        now=clock.now(),
        wrapper=wrapper(app),
    )
    session.commit()
    return client, key, token_key


def grant(signer: TokenSigner, clock: FixedClock) -> str:
    """A token for a subscriber, signed now."""
    token, _ = signer.issue(
        reader_id="rdr_someone",
        reason="subscription",
        plan=None,
        group_id=None,
        until=None,
        now=clock.now(),
    )
    return token


def signer_now(app: Flask, session: Session, client: ApiClient, clock: FixedClock) -> TokenSigner:
    """What Tollgate signs the client's tokens with at the fake clock's moment."""
    return token_keys.signer_for(
        session, client, wrapper=wrapper(app), now=clock.now(), ttl=timedelta(minutes=15)
    )


def checks_at_tollgate(
    app: Flask, session: Session, client: ApiClient, token: str, clock: FixedClock
) -> bool:
    """Whether Tollgate's own check (``/entitlement/check``) accepts ``token`` now."""
    try:
        token_keys.verifier_for(
            session, token[:11], client, wrapper=wrapper(app), now=clock.now()
        ).verify(token, now=clock.now())
    except TokenInvalid:
        return False
    return True


# One secret, one purpose ------------------------------------------------------------------------


def site_held_secrets(token_key: tokens.TokenKey) -> list[str]:
    """Everything a site holds, written every way it could be tried as a secret."""
    derived = hashlib.sha256(tokens.SALT.encode() + b"signer" + token_key.secret.encode()).digest()
    return [str(token_key), token_key.secret, derived.hex(), base64.b64encode(derived).decode()]


def test_no_token_key_can_sign_an_e_mail_link(
    app: Flask, session: Session, clock: FixedClock, created: Any
) -> None:
    _, _, token_key = created
    reader = factories.reader(email="admin@tollgate.example", staff_role=StaffRole.ADMIN)
    session.commit()
    real = app.config["SECRET_KEYS"]
    now, age = clock.now(), 3600
    for forged_with in site_held_secrets(token_key):
        keys = [forged_with]
        forged = {
            "verify": accounts.verification_token(keys, reader, now),
            "reset": accounts.reset_token(keys, reader, now),
            "change": accounts.change_email_token(keys, reader, "evil@example.org", now),
        }
        with pytest.raises(InvalidLink):
            accounts.verify_email(session, real, forged["verify"], now=now, max_age=age)
        with pytest.raises(InvalidLink):
            accounts.reader_for_reset(session, real, forged["reset"], now=now, max_age=age)
        with pytest.raises(InvalidLink):
            accounts.confirm_email_change(session, real, forged["change"], now=now, max_age=age)
    session.refresh(reader)
    assert reader.email == "admin@tollgate.example"


def test_no_token_key_can_sign_a_session_cookie(app: Flask, session: Session, created: Any) -> None:
    _, _, token_key = created
    admin = factories.reader(email="admin@tollgate.example", staff_role=StaffRole.ADMIN)
    session.commit()
    for forged_with in site_held_secrets(token_key):
        forger = Flask("forger")
        forger.secret_key = forged_with
        serializer = SecureCookieSessionInterface().get_signing_serializer(forger)
        assert serializer is not None
        cookie = serializer.dumps({"_user_id": admin.get_id(), "_fresh": True})
        browser = app.test_client()
        browser.set_cookie(app.config.get("SESSION_COOKIE_NAME", "session"), cookie)

        response = browser.get("/staff/api-clients")

        assert response.status_code == 302
        assert "/login" in response.headers["Location"]
    browser = app.test_client()
    login(browser, admin)  # the genuine way in still works, so the refusal above is the key's
    assert browser.get("/staff/api-clients").status_code == 200


def test_secret_keys_sign_no_token_a_site_accepts(
    app: Flask, session: Session, clock: FixedClock, created: Any
) -> None:
    client, _, token_key = created
    site = TokenSigner([token_key], client_id=client.public_id)
    payload = {
        "reader_id": None,
        "reason": "complimentary",
        "plan": None,
        "group_id": None,
        "until": None,
        "client_id": client.public_id,
        "exp": int(clock.now().timestamp()) + 600,
    }
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    for secret in app.config["SECRET_KEYS"]:
        for salt in (tokens.SALT, legacy_tokens.SALT):
            with time_machine.travel(clock.now(), tick=False):
                new_form = TimestampSigner(secret, salt=salt, digest_method=hashlib.sha256).sign(
                    f"{token_key.kid}.{body}"
                )
                old_form = URLSafeTimedSerializer(
                    secret, salt=salt, signer_kwargs={"digest_method": hashlib.sha256}
                ).dumps({**payload, "granted": True})
            for forged in (new_form.decode(), old_form):
                with pytest.raises(TokenInvalid):
                    site.verify(forged, now=clock.now())
    assert site.verify(grant(signer_now(app, session, client, clock), clock), now=clock.now())


def test_token_keys_are_random_not_derived_from_secret_keys_and_never_stored_in_clear(
    app: Flask, session: Session, clock: FixedClock, created: Any
) -> None:
    _, _, token_key = created
    _, _, second = api_clients.create(
        session, name="Other", scopes=["tokens:issue"], created_by=None, now=clock.now()
    )
    session.commit()
    assert token_key.secret != second.secret
    assert all(token_key.secret not in secret for secret in app.config["SECRET_KEYS"])
    stored = session.scalars(select(TokenKey)).all()
    for row in stored:
        assert row.wrapped_secret.startswith("v1.")
        assert token_key.secret not in row.wrapped_secret
        assert second.secret not in row.wrapped_secret
    assert wrapper(app).unwrap(token_key.kid, stored[0].wrapped_secret) in (token_key, second)


def test_a_stored_key_cannot_be_opened_without_its_wrapping_secret_or_under_another_kid(
    app: Flask, session: Session, created: Any
) -> None:
    row = session.scalars(select(TokenKey)).one()
    other = KeyWrapper(["another-wrapping-secret-of-forty-characters!"])
    with pytest.raises(TokenKeyUnavailable):
        other.unwrap(row.kid, row.wrapped_secret)
    with pytest.raises(TokenKeyUnavailable):
        wrapper(app).unwrap("tk_AAAAAAAA", row.wrapped_secret)  # moved to another row
    with pytest.raises(TokenKeyUnavailable):
        wrapper(app).unwrap(row.kid, row.wrapped_secret[:-4] + "AAAA")


def test_rewrapping_moves_every_key_to_the_first_wrapping_secret(
    app: Flask, session: Session, created: Any
) -> None:
    _, _, token_key = created
    old = wrapper(app)
    new = KeyWrapper(
        ["the-next-wrapping-secret-0123456789abcdef", *app.config["TOKEN_KEY_WRAPPING_SECRETS"]]
    )

    assert token_keys.rewrap_all(session, new) == 1
    assert token_keys.rewrap_all(session, new) == 0
    session.commit()
    row = session.scalars(select(TokenKey)).one()
    assert (
        KeyWrapper(["the-next-wrapping-secret-0123456789abcdef"]).unwrap(
            row.kid, row.wrapped_secret
        )
        == token_key
    )
    with pytest.raises(TokenKeyUnavailable):
        old.unwrap(row.kid, row.wrapped_secret)


def test_the_wrapper_needs_a_list_of_secrets() -> None:
    with pytest.raises(ValueError, match="list"):
        KeyWrapper("one-secret")
    with pytest.raises(ValueError, match="list"):
        KeyWrapper([])


# The life of a key, on the fake clock -----------------------------------------------------------


def states(session: Session, client: ApiClient, clock: FixedClock) -> dict[str, TokenKeyState]:
    keys = token_keys.keys_of(session, client.id)
    return {key.kid: token_keys.state(key, keys, clock.now()) for key in keys}


def test_a_client_is_created_with_one_key_that_signs(
    app: Flask, session: Session, clock: FixedClock, created: Any
) -> None:
    client, _, token_key = created

    assert states(session, client, clock) == {token_key.kid: TokenKeyState.SIGNING}
    assert grant(signer_now(app, session, client, clock), clock).startswith(token_key.kid + ".")


def test_rotation_overlaps_then_the_old_key_retires(
    app: Flask, session: Session, clock: FixedClock, created: Any
) -> None:
    client, _, old = created
    old_token = grant(signer_now(app, session, client, clock), clock)

    new = token_keys.rotate(
        session,
        client,
        wrapper=wrapper(app),
        now=clock.now(),
        signs_in=timedelta(hours=1),
        retire_after=timedelta(minutes=30),
    )
    session.commit()

    assert states(session, client, clock) == {
        new.kid: TokenKeyState.PENDING,
        old.kid: TokenKeyState.SIGNING,
    }
    assert grant(signer_now(app, session, client, clock), clock).startswith(old.kid + ".")
    clock.advance(hours=1)
    assert states(session, client, clock) == {
        new.kid: TokenKeyState.SIGNING,
        old.kid: TokenKeyState.VERIFYING,
    }
    newest_token = grant(signer_now(app, session, client, clock), clock)
    assert newest_token.startswith(new.kid + ".")
    long_lived = TokenSigner([old], client_id=client.public_id, ttl=timedelta(hours=2))
    late_old_token = grant(long_lived, clock)
    clock.advance(minutes=29, seconds=59)
    assert checks_at_tollgate(app, session, client, late_old_token, clock)
    clock.advance(seconds=1)
    assert states(session, client, clock)[old.kid] is TokenKeyState.RETIRED
    assert not checks_at_tollgate(app, session, client, late_old_token, clock)
    fresh = grant(signer_now(app, session, client, clock), clock)
    assert fresh.startswith(new.kid + ".")
    assert checks_at_tollgate(app, session, client, fresh, clock)
    assert not checks_at_tollgate(app, session, client, old_token, clock)


def test_a_second_rotation_never_postpones_an_earlier_retirement(
    app: Flask, session: Session, clock: FixedClock, created: Any
) -> None:
    client, _, first = created
    token_keys.rotate(
        session, client, wrapper=wrapper(app), now=clock.now(), retire_after=timedelta(minutes=15)
    )
    token_keys.rotate(
        session, client, wrapper=wrapper(app), now=clock.now(), retire_after=timedelta(days=1)
    )

    first_row = token_keys.by_kid(session, first.kid)
    assert first_row.retires_at == START + timedelta(minutes=15)


@pytest.mark.parametrize(
    ("signs_in", "retire_after", "field"),
    [
        (timedelta(seconds=-1), timedelta(0), "signs_in"),
        (timedelta(days=31), timedelta(0), "signs_in"),
        (timedelta(0), timedelta(days=91), "retire_after"),
    ],
)
def test_rotation_times_out_of_range_are_refused_naming_the_field(
    app: Flask,
    session: Session,
    clock: FixedClock,
    created: Any,
    signs_in: timedelta,
    retire_after: timedelta,
    field: str,
) -> None:
    client, _, _ = created
    with pytest.raises(ValidationFailed) as caught:
        token_keys.rotate(
            session,
            client,
            wrapper=wrapper(app),
            now=clock.now(),
            signs_in=signs_in,
            retire_after=retire_after,
        )
    assert caught.value.field == field
    assert len(token_keys.keys_of(session, client.id)) == 1


def test_a_revoked_key_stops_at_once_and_the_key_before_it_signs_again(
    app: Flask, session: Session, clock: FixedClock, created: Any
) -> None:
    client, _, old = created
    new = token_keys.rotate(session, client, wrapper=wrapper(app), now=clock.now())
    new_token = grant(signer_now(app, session, client, clock), clock)

    token_keys.revoke(token_keys.by_kid(session, new.kid), now=clock.now())

    assert states(session, client, clock) == {
        new.kid: TokenKeyState.REVOKED,
        old.kid: TokenKeyState.SIGNING,
    }
    assert not checks_at_tollgate(app, session, client, new_token, clock)
    with pytest.raises(Conflict):
        token_keys.revoke(token_keys.by_kid(session, new.kid), now=clock.now())


def test_a_client_without_a_key_that_signs_can_issue_no_token(
    app: Flask, session: Session, clock: FixedClock, created: Any
) -> None:
    client, _, only = created
    token_keys.revoke(token_keys.by_kid(session, only.kid), now=clock.now())

    with pytest.raises(NoTokenKey):
        signer_now(app, session, client, clock)


def test_revoking_the_client_revokes_its_token_keys_and_it_cannot_rotate_any_more(
    app: Flask, session: Session, clock: FixedClock, created: Any
) -> None:
    client, _, token_key = created
    api_clients.revoke(client, now=clock.now())

    assert states(session, client, clock) == {token_key.kid: TokenKeyState.REVOKED}
    with pytest.raises(Conflict):
        token_keys.rotate(session, client, wrapper=wrapper(app), now=clock.now())


def test_another_clients_key_does_not_verify_for_this_client(
    app: Flask, session: Session, clock: FixedClock, created: Any
) -> None:
    client, _, _ = created
    other, _, _ = api_clients.create(
        session, name="Other", scopes=["tokens:issue"], created_by=None, now=clock.now()
    )
    other_token = grant(signer_now(app, session, other, clock), clock)

    with pytest.raises(TokenInvalid, match="another API client"):
        token_keys.verifier_for(
            session, other_token[:11], client, wrapper=wrapper(app), now=clock.now()
        )


# CLI --------------------------------------------------------------------------------------------


def test_the_cli_creates_a_client_with_its_token_key_shown_once(
    app: Flask, runner: FlaskCliRunner, session: Session, clock: FixedClock
) -> None:
    result = runner.invoke(
        args=["billing", "api-client", "create", "--name", "Site", "--scopes", "tokens:issue"]
    )

    assert result.exit_code == 0, result.output
    shown = KEY_TEXT.findall(result.output)
    assert len(shown) == 1
    client = session.scalars(select(ApiClient)).one()
    signer = signer_now(app, session, client, clock)
    assert TokenSigner(shown, client_id=client.public_id).verify(
        grant(signer, clock), now=clock.now()
    )
    listed = runner.invoke(args=["billing", "api-client", "token-keys", client.public_id])
    assert listed.exit_code == 0
    assert f"{shown[0][:11]}  signing" in listed.output
    assert shown[0][12:] not in listed.output


def test_the_cli_rotates_with_the_chosen_times_lists_and_revokes_token_keys(
    app: Flask, runner: FlaskCliRunner, session: Session, clock: FixedClock, created: Any
) -> None:
    client, _, old = created

    rotated = runner.invoke(
        args=[
            "billing",
            "api-client",
            "rotate-token-key",
            client.public_id,
            "--signs-in",
            "2h",
            "--retire-after",
            "15m",
        ]
    )

    assert rotated.exit_code == 0, rotated.output
    new = tokens.TokenKey.parse(KEY_TEXT.findall(rotated.output)[0])
    assert "signing from 2026-11-25 11:00 UTC" in rotated.output
    assert "stop verifying at 2026-11-25 11:15 UTC" in rotated.output
    assert token_keys.by_kid(session, new.kid).signs_from == START + timedelta(hours=2)
    listed = runner.invoke(args=["billing", "api-client", "token-keys", client.public_id]).output
    assert f"{new.kid}  pending" in listed
    assert f"{old.kid}  signing" in listed
    revoked = runner.invoke(args=["billing", "api-client", "revoke-token-key", new.kid])
    assert revoked.exit_code == 0, revoked.output
    again = runner.invoke(args=["billing", "api-client", "revoke-token-key", new.kid])
    assert again.exit_code != 0
    assert "already revoked" in again.output
    actions = [e.action for e in session.scalars(select(AuditLog).order_by(AuditLog.id))]
    assert actions[-2:] == ["api_client.token_key_rotated", "api_client.token_key_revoked"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--signs-in", "soon"], "not a duration"),
        (["--retire-after", "100d"], "--retire-after"),
    ],
)
def test_the_cli_names_the_option_at_fault_when_rotating(
    runner: FlaskCliRunner, session: Session, created: Any, args: list[str], message: str
) -> None:
    client, _, _ = created
    result = runner.invoke(
        args=["billing", "api-client", "rotate-token-key", client.public_id, *args]
    )

    assert result.exit_code == 2
    assert message in result.output
    assert len(token_keys.keys_of(session, client.id)) == 1


def test_the_cli_refuses_unknown_clients_and_keys(runner: FlaskCliRunner) -> None:
    for args in (
        ["token-keys", "cli_nope"],
        ["rotate-token-key", "cli_nope"],
        ["revoke-token-key", "tk_nonenone"],
    ):
        result = runner.invoke(args=["billing", "api-client", *args])
        assert result.exit_code == 2
        assert "No " in result.output


def test_the_cli_rewraps_token_keys(runner: FlaskCliRunner, created: Any) -> None:
    result = runner.invoke(args=["billing", "api-client", "rewrap-token-keys"])

    assert result.exit_code == 0
    assert "Re-wrapped 0 token key(s)" in result.output


# Staff pages ------------------------------------------------------------------------------------


@pytest.fixture
def admin(client: FlaskClient) -> Any:
    person = factories.reader(email="admin@tollgate.example", staff_role=StaffRole.ADMIN)
    login(client, person)
    return person


def post_from(client: FlaskClient, page: str, path: str, data: dict[str, str]) -> Any:
    """Submit a form of ``page`` to ``path``, with the page's CSRF token."""
    return client.post(path, data={**data, "csrf_token": csrf_token(client, page)})


def test_creating_a_client_on_the_staff_page_shows_its_token_key_once(
    app: Flask, client: FlaskClient, session: Session, admin: Any, clock: FixedClock
) -> None:
    response = post_form(
        client,
        "/staff/api-clients/new",
        {"name": "Site", "scopes": "tokens:issue", "allowed_origins": ""},
    )

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    shown = re.search(r'id="token-key" type="text" value="([^"]+)"', page)
    assert shown
    created = session.scalars(select(ApiClient)).one()
    verifier = TokenSigner([shown.group(1)], client_id=created.public_id)
    assert verifier.verify(grant(signer_now(app, session, created, clock), clock), now=clock.now())
    for later in ("/staff/api-clients", f"/staff/api-clients/{created.public_id}/token-keys"):
        assert shown.group(1)[12:] not in client.get(later).get_data(as_text=True)


def test_the_token_keys_page_rotates_with_the_chosen_times_and_revokes(
    client: FlaskClient, session: Session, admin: Any, clock: FixedClock, created: Any
) -> None:
    api_client, _, first = created
    here = f"/staff/api-clients/{api_client.public_id}/token-keys"
    page = client.get(here).get_data(as_text=True)
    assert f'data-kid="{first.kid}" data-state="signing"' in page

    response = post_from(
        client, here, f"{here}/rotate", {"signs_in": "3600", "retire_after": "900"}
    )

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    shown = re.search(
        r'id="token-key" type="text" value="([^"]+)"', response.get_data(as_text=True)
    )
    assert shown
    new = tokens.TokenKey.parse(shown.group(1))
    row = token_keys.by_kid(session, new.kid)
    assert (row.signs_from, token_keys.by_kid(session, first.kid).retires_at) == (
        START + timedelta(hours=1),
        START + timedelta(hours=1, minutes=15),
    )
    page = client.get(here).get_data(as_text=True)
    assert f'data-kid="{new.kid}" data-state="pending"' in page
    assert new.secret not in page

    revoked = post_from(client, here, f"{here}/{new.kid}/revoke", {})
    assert revoked.status_code == 302
    session.expire_all()
    assert token_keys.by_kid(session, new.kid).revoked_at == START
    assert f'data-kid="{new.kid}" data-state="revoked"' in client.get(here).get_data(as_text=True)


def test_a_choice_not_offered_is_refused_and_creates_no_key(
    client: FlaskClient, session: Session, admin: Any, created: Any
) -> None:
    api_client, _, _ = created
    here = f"/staff/api-clients/{api_client.public_id}/token-keys"

    response = post_from(client, here, f"{here}/rotate", {"signs_in": "-5", "retire_after": "900"})

    assert response.status_code == 302
    assert len(token_keys.keys_of(session, api_client.id)) == 1


def test_another_clients_key_cannot_be_revoked_through_this_client(
    client: FlaskClient, session: Session, admin: Any, clock: FixedClock, created: Any
) -> None:
    api_client, _, _ = created
    _, _, other_key = api_clients.create(
        session, name="Other", scopes=["tokens:issue"], created_by=None, now=clock.now()
    )
    session.commit()
    here = f"/staff/api-clients/{api_client.public_id}/token-keys"

    post_from(client, here, f"{here}/{other_key.kid}/revoke", {})

    session.expire_all()
    assert token_keys.by_kid(session, other_key.kid).revoked_at is None


@pytest.mark.parametrize("role", [StaffRole.NONE, StaffRole.SUPPORT, StaffRole.FINANCE])
def test_only_admins_see_or_change_token_keys(
    client: FlaskClient, session: Session, created: Any, role: StaffRole
) -> None:
    api_client, _, token_key = created
    login(client, factories.reader(staff_role=role))
    session.commit()
    here = f"/staff/api-clients/{api_client.public_id}/token-keys"

    assert client.get(here).status_code == 403
    assert client.post(f"{here}/rotate").status_code in (400, 403)
    assert client.post(f"{here}/{token_key.kid}/revoke").status_code in (400, 403)
    assert len(token_keys.keys_of(session, api_client.id)) == 1
