"""The audit log: append-only in the application, browsable, filterable and exportable by admins."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from billing.models import StaffRole
from billing.services import audit
from tests import factories
from tests.helpers import login


@pytest.fixture
def entries(session: Session) -> None:
    """Three entries of the last days by two actors."""
    now = factories.NOW
    audit.record(
        session,
        now=now - timedelta(days=3),
        actor="cli",
        action="staff.role_set",
        target=None,
        details={"role": "finance"},
    )
    audit.record(
        session,
        now=now - timedelta(days=2),
        actor="agent@example.org",
        action="support.trial_extended",
        details={"reason": "ticket 7"},
        ip="192.0.2.1",
    )
    audit.record(session, now=now - timedelta(days=40), actor="cli", action="api_client.created")
    session.commit()


@pytest.mark.usefixtures("entries")
def test_an_admin_browses_the_last_30_days_and_filters_by_actor_and_action(
    client: FlaskClient,
) -> None:
    login(client, factories.reader(staff_role=StaffRole.ADMIN))

    everything = client.get("/staff/audit").get_data(as_text=True)
    by_actor = client.get("/staff/audit?actor=agent@").get_data(as_text=True)
    by_action = client.get("/staff/audit?action=role_set").get_data(as_text=True)

    assert "support.trial_extended" in everything and "staff.role_set" in everything
    assert "api_client.created" not in everything, "older than 30 days"
    assert "support.trial_extended" in by_actor and "staff.role_set" not in by_actor
    assert "ticket 7" in by_actor and "192.0.2.1" in by_actor
    assert "staff.role_set" in by_action and "support.trial_extended" not in by_action


@pytest.mark.usefixtures("entries")
def test_an_admin_exports_the_audit_log_and_the_export_is_logged_too(
    client: FlaskClient,
) -> None:
    login(client, factories.reader(staff_role=StaffRole.ADMIN))

    response = client.get("/staff/audit/export?format=csv&from=2026-10-01&to=2026-11-30")

    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0][:3] == ["Time (UTC)", "Who", "Action"]
    assert [r[2] for r in rows[1:]] == [
        "api_client.created",
        "staff.role_set",
        "support.trial_extended",
    ]
    response.close()
    after = client.get("/staff/audit?action=report.exported").get_data(as_text=True)
    assert "report.exported" in after and '"report": "audit"' in after.replace("&#34;", '"')


@pytest.mark.parametrize("role", [StaffRole.FINANCE, StaffRole.SUPPORT, StaffRole.NONE])
def test_only_admins_see_the_audit_log(client: FlaskClient, role: StaffRole) -> None:
    login(client, factories.reader(staff_role=role))

    assert client.get("/staff/audit").status_code == 403
    assert client.get("/staff/audit/export?format=csv").status_code == 403


def test_the_application_cannot_change_or_delete_an_audit_entry(session: Session) -> None:
    entry = audit.record(session, now=factories.NOW, actor="cli", action="x")
    session.commit()

    entry.action = "y"
    with pytest.raises(audit.AuditLogIsAppendOnly):
        session.flush()
    session.rollback()
    session.delete(entry)
    with pytest.raises(audit.AuditLogIsAppendOnly):
        session.flush()
    session.rollback()
