"""Support tools: find a reader, act for them with a reason, every action in the audit log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import (
    AuditLog,
    ComplimentaryGrant,
    Reader,
    StaffRole,
    TrialStatus,
    WebhookEvent,
    WebhookEventStatus,
)
from tests import factories
from tests.conftest import Outbox, csrf_token
from tests.helpers import login


@pytest.fixture
def agent(client: FlaskClient) -> Reader:
    """A logged-in support agent."""
    found = factories.reader(email="agent@tollgate.example", staff_role=StaffRole.SUPPORT)
    login(client, found)
    return found


@pytest.fixture
def on_trial() -> Reader:
    """A reader whose trial ends in two days."""
    trial = factories.TrialFactory(
        reader=factories.reader(email="tina@example.org", name="Tina Trial"),
        started_at=factories.NOW - timedelta(days=12),
    )
    return trial.reader  # type: ignore[no-any-return]


def _audit(session: Session, action: str) -> AuditLog:
    session.expire_all()
    return session.scalars(select(AuditLog).where(AuditLog.action == action)).one()


@pytest.mark.usefixtures("agent")
def test_a_reader_is_found_by_email_name_reader_id_or_stripe_id(
    client: FlaskClient, on_trial: Reader
) -> None:
    customer = factories.CustomerFactory(reader=factories.reader(email="paul@example.org"))

    for q in ("tina@", "Tina Tr", on_trial.public_id):
        page = client.get("/staff/support", query_string={"q": q}).get_data(as_text=True)
        assert f'data-reader="{on_trial.public_id}"' in page, q
    by_stripe = client.get("/staff/support", query_string={"q": customer.stripe_id})
    assert f'data-reader="{customer.reader.public_id}"' in by_stripe.get_data(as_text=True)
    assert "0 readers found" in client.get("/staff/support?q=nobody").get_data(as_text=True)


def test_extending_a_trial_moves_its_end_and_logs_who_why_before_and_after(
    client: FlaskClient, session: Session, agent: Reader, on_trial: Reader
) -> None:
    page = f"/staff/readers/{on_trial.public_id}/support"
    ends = on_trial.trial.ends_at

    response = client.post(
        f"/staff/readers/{on_trial.public_id}/trial",
        data={
            "days": "7",
            "reason": "Asked by phone, ticket 42",
            "csrf_token": _token(client, page),
        },
    )

    assert response.status_code == 302
    session.expire_all()
    assert on_trial.trial.ends_at == ends + timedelta(days=7)
    entry = _audit(session, "support.trial_extended")
    assert (entry.actor_id, entry.target_id, entry.ip) == (
        agent.id,
        on_trial.public_id,
        "127.0.0.1",
    )
    assert entry.details["reason"] == "Asked by phone, ticket 42"
    assert entry.details["before"]["ends_at"] == ends.isoformat()
    assert entry.details["after"]["ends_at"] == (ends + timedelta(days=7)).isoformat()


def _token(client: FlaskClient, path: str) -> str:
    return csrf_token(client, path)


@pytest.mark.usefixtures("agent")
def test_an_action_without_a_reason_is_refused_and_changes_nothing(
    client: FlaskClient, session: Session, on_trial: Reader
) -> None:
    page = f"/staff/readers/{on_trial.public_id}/support"
    ends = on_trial.trial.ends_at

    response = client.post(
        f"/staff/readers/{on_trial.public_id}/trial",
        data={"days": "7", "reason": "  ", "csrf_token": _token(client, page)},
    )
    too_long = client.post(
        f"/staff/readers/{on_trial.public_id}/trial",
        data={"days": "365", "reason": "why", "csrf_token": _token(client, page)},
    )

    assert response.status_code == 400 and "Say why" in response.get_data(as_text=True)
    assert too_long.status_code == 400 and "1 to 90 days" in too_long.get_data(as_text=True)
    session.expire_all()
    assert on_trial.trial.ends_at == ends
    assert session.scalars(select(AuditLog)).all() == []


@pytest.mark.usefixtures("agent")
def test_an_expired_trial_extended_runs_again_from_now(
    client: FlaskClient, session: Session, clock: object
) -> None:
    trial = factories.TrialFactory(
        started_at=factories.NOW - timedelta(days=30), status=TrialStatus.EXPIRED
    )
    page = f"/staff/readers/{trial.reader.public_id}/support"

    client.post(
        f"/staff/readers/{trial.reader.public_id}/trial",
        data={"days": "3", "reason": "goodwill", "csrf_token": _token(client, page)},
    )

    session.expire_all()
    assert trial.status == TrialStatus.ACTIVE
    assert trial.ends_at == factories.NOW + timedelta(days=3)


def test_granting_and_revoking_complimentary_access_with_reasons(
    client: FlaskClient, session: Session, agent: Reader
) -> None:
    press = factories.reader(email="press@example.org")
    page = f"/staff/readers/{press.public_id}/support"

    granted = client.post(
        f"/staff/readers/{press.public_id}/grants",
        data={
            "expires_on": "2027-01-31",
            "reason": "Press pass",
            "csrf_token": _token(client, page),
        },
    )

    assert granted.status_code == 302
    grant = session.scalars(select(ComplimentaryGrant)).one()
    assert (grant.reason, grant.granted_by_id) == ("Press pass", agent.id)
    assert grant.expires_at == datetime(2027, 1, 31, 23, 59, 59, tzinfo=UTC)
    assert "complimentary" in client.get(page).get_data(as_text=True)
    past = client.post(
        f"/staff/readers/{press.public_id}/grants",
        data={"expires_on": "2020-01-01", "reason": "oops", "csrf_token": _token(client, page)},
    )
    assert past.status_code == 400 and "must end in the future" in past.get_data(as_text=True)

    revoked = client.post(
        f"/staff/readers/{press.public_id}/grants/{grant.id}/revoke",
        data={"reason": "Left the paper", "csrf_token": _token(client, page)},
    )

    assert revoked.status_code == 302
    session.expire_all()
    assert grant.revoked_at == factories.NOW
    assert _audit(session, "support.access_revoked").details["reason"] == "Left the paper"


@pytest.mark.usefixtures("agent")
def test_support_sends_a_reset_link_and_never_sets_a_password(
    client: FlaskClient, session: Session, outbox: Outbox, on_trial: Reader
) -> None:
    page = f"/staff/readers/{on_trial.public_id}/support"
    hash_before = on_trial.password_hash

    response = client.post(
        f"/staff/readers/{on_trial.public_id}/mail/password-reset",
        data={"reason": "Locked out", "csrf_token": _token(client, page)},
    )
    verified = client.post(
        f"/staff/readers/{on_trial.public_id}/mail/verification",
        data={"reason": "Lost it", "csrf_token": _token(client, page)},
    )

    assert response.status_code == 302
    [mail] = outbox.all(on_trial.email)
    assert "/password/reset/" in mail.body
    assert _audit(session, "support.password_reset_sent").details["reason"] == "Locked out"
    assert verified.status_code == 409, "the address is verified already"
    session.expire_all()
    assert on_trial.password_hash == hash_before
    assert 'type="password"' not in client.get(page).get_data(as_text=True)


@pytest.mark.parametrize(
    ("role", "path", "method"),
    [
        (StaffRole.NONE, "/staff/support", "get"),
        (StaffRole.NONE, "/staff/support/events", "get"),
        (StaffRole.FINANCE, "/staff/support/events", "get"),
        (StaffRole.FINANCE, "/staff/readers/{id}/trial", "post"),
        (StaffRole.SUPPORT, "/staff/readers/{id}/invoices/1/refund", "post"),
    ],
)
def test_each_tool_is_refused_to_the_wrong_role(
    client: FlaskClient, role: StaffRole, path: str, method: str
) -> None:
    someone = factories.reader()
    login(client, factories.reader(staff_role=role))
    client.application.config["WTF_CSRF_ENABLED"] = False

    response = getattr(client, method)(path.format(id=someone.public_id), data={"reason": "x"})

    assert response.status_code == 403


def test_a_guest_is_sent_to_log_in_for_the_support_tools(client: FlaskClient) -> None:
    response = client.get("/staff/support")

    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_a_failed_event_is_listed_and_replaying_it_is_logged(
    client: FlaskClient, session: Session, agent: Reader
) -> None:
    event = WebhookEvent(
        stripe_event_id="evt_broken",
        type="unknown.thing",
        stripe_created_at=factories.NOW,
        received_at=factories.NOW,
        payload={"id": "evt_broken", "type": "unknown.thing", "data": {"object": {}}},
        status=WebhookEventStatus.FAILED,
        attempts=3,
        last_error="boom",
    )
    session.add(event)
    session.commit()

    page = client.get("/staff/support/events").get_data(as_text=True)
    assert "evt_broken" in page and "boom" in page
    response = client.post(
        f"/staff/support/events/{event.id}/replay",
        data={"reason": "Fixed the handler", "csrf_token": _token(client, "/staff/support/events")},
    )

    assert response.status_code == 302
    entry = _audit(session, "support.event_replayed")
    assert entry.details["before"] == {"status": "failed"}
    assert entry.details["reason"] == "Fixed the handler"
