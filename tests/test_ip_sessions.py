"""Anonymous IP sessions: counted per group per day off the request path, shown to admins and staff."""

from __future__ import annotations

import threading
from datetime import date, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from billing import db, ip_session_counter
from billing.clock import FixedClock
from billing.ip_session_counter import IpSessionCounter
from billing.models import Group, GroupIPSessions, GroupIPVisitor, MembershipRole
from billing.services import api_clients, groups, ip_sessions, reports
from billing.services.groups import GroupRules
from billing.services.reports.base import Filters
from tests import factories
from tests.conftest import START, TEST_SECRET
from tests.helpers import FakeMonotonic, login

RULES = GroupRules()
TODAY = START.date()
KEY = ip_sessions.visitor_key([TEST_SECRET])


@pytest.fixture
def monotonic(app: Flask) -> FakeMonotonic:
    """The fake monotonic clock of the app's IP session counter (flushes every 60 s)."""
    fake = FakeMonotonic()
    app.extensions["ip_sessions"] = IpSessionCounter(
        app.extensions["db_sessionmaker"], key=KEY, flush_interval=60.0, monotonic=fake
    )
    return fake


@pytest.fixture
def api_key(session: Session, clock: FixedClock) -> str:
    """A content site's API key."""
    _client, key, _token_key = api_clients.create(
        session,
        name="Content site",
        scopes=list(api_clients.SCOPES),
        allowed_origins=["https://news.example.eu"],
        created_by=None,
        now=clock.now(),
    )
    session.commit()
    return key


def _office(session: Session, clock: FixedClock, cidr: str = "81.2.69.0/24") -> Group:
    """A paying group whose office network ``cidr`` staff approved."""
    group = factories.group_with_seats(3)
    admin = next(m.reader for m in groups.members(session, group) if m.role == MembershipRole.ADMIN)
    entry = groups.add_ip_range(session, group, admin, cidr, rules=RULES, now=clock.now())
    groups.decide_ip_range(session, factories.reader(), entry.id, True, now=clock.now())
    session.commit()
    return group


def _visit(client: FlaskClient, key: str, ip: str) -> Any:
    response = client.get(
        "/api/v1/entitlement", query_string={"ip": ip}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200
    return response


def _sessions(session: Session) -> dict[tuple[int, date], int]:
    session.expire_all()
    rows = session.execute(
        select(GroupIPSessions.group_id, GroupIPSessions.day, GroupIPSessions.sessions)
    )
    return {(group_id, day): count for group_id, day, count in rows}


# --- counting -----------------------------------------------------------------------------------


def test_each_address_reading_through_a_group_counts_once_a_day_and_refused_ones_not_at_all(
    app: Flask,
    session: Session,
    client: FlaskClient,
    clock: FixedClock,
    api_key: str,
    monotonic: FakeMonotonic,
) -> None:
    group = _office(session, clock)
    for ip in ("81.2.69.1", "81.2.69.1", "81.2.69.2", "81.2.69.1", "198.51.100.7"):
        _visit(client, api_key, ip)
    clock.advance(timedelta(days=1))
    _visit(client, api_key, "81.2.69.1")

    assert ip_session_counter.current().flush() == 3

    assert _sessions(session) == {
        (group.id, TODAY): 2,
        (group.id, TODAY + timedelta(days=1)): 1,
    }


def test_an_address_checked_with_a_reader_who_has_no_access_counts_for_the_group(
    app: Flask,
    session: Session,
    client: FlaskClient,
    clock: FixedClock,
    api_key: str,
    monotonic: FakeMonotonic,
) -> None:
    group = _office(session, clock)
    stranger = factories.reader()
    session.commit()
    response = client.post(
        "/api/v1/entitlement/check",
        json={"reader_id": stranger.public_id, "ip": "81.2.69.40"},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert response.get_json()["reason"] == "group_ip"

    ip_session_counter.current().flush()

    assert _sessions(session) == {(group.id, TODAY): 1}


def test_two_processes_seeing_the_same_visitor_count_one_session(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    group = _office(session, clock)
    factory = app.extensions["db_sessionmaker"]
    first, second = (IpSessionCounter(factory, key=KEY) for _ in range(2))
    for counter in (first, second):
        counter.record(group.public_id, "81.2.69.1", clock.now())
    second.record(group.public_id, "81.2.69.2", clock.now())

    assert (first.flush(), second.flush()) == (1, 1)
    first.record(group.public_id, "81.2.69.2", clock.now())
    assert first.flush() == 0

    assert _sessions(session) == {(group.id, TODAY): 2}


def test_processes_flushing_overlapping_visits_at_the_same_moment_count_each_visitor_once(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    group = _office(session, clock)
    factory = app.extensions["db_sessionmaker"]
    counters = [IpSessionCounter(factory, key=KEY) for _ in range(4)]
    for n, counter in enumerate(counters):
        for host in range(n * 20, n * 20 + 60):  # each overlaps the next by 40 addresses
            counter.record(group.public_id, f"81.2.69.{host}", clock.now())
    barrier = threading.Barrier(len(counters))
    added: list[int] = []

    def flush(counter: IpSessionCounter) -> None:
        barrier.wait(timeout=10)
        added.append(counter.flush())

    threads = [threading.Thread(target=flush, args=(c,)) for c in counters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sum(added) == 120
    assert _sessions(session) == {(group.id, TODAY): 120}


def test_addresses_are_stored_only_as_keyed_hashes(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    group = _office(session, clock)
    counter = IpSessionCounter(app.extensions["db_sessionmaker"], key=KEY)
    counter.record(group.public_id, "81.2.69.1", clock.now())
    counter.flush()

    [visitor] = session.scalars(select(GroupIPVisitor.visitor)).all()
    assert "81.2.69" not in visitor
    other_key = ip_sessions.visitor_key(["another-secret-that-is-long-enough-0123456789"])
    assert other_key != KEY
    assert ip_sessions.write_batch(session, [(group.public_id, TODAY, "81.2.69.1")], key=KEY) == 0


# --- flushing -----------------------------------------------------------------------------------


def test_a_visit_writes_nothing_during_the_request_and_is_flushed_after_the_response_once_due(
    app: Flask,
    session: Session,
    client: FlaskClient,
    clock: FixedClock,
    api_key: str,
    monotonic: FakeMonotonic,
) -> None:
    group = _office(session, clock)
    statements: list[str] = []
    event.listen(db.engine(), "before_cursor_execute", lambda *a: statements.append(a[2]))
    _visit(client, api_key, "81.2.69.1").close()
    assert not [s for s in statements if "group_ip_sessions" in s or "group_ip_visitors" in s]
    assert _sessions(session) == {}

    monotonic.value += 60
    response = _visit(client, api_key, "81.2.69.2")
    assert _sessions(session) == {}, "the flush waits for the response to be sent"
    response.close()

    assert _sessions(session) == {(group.id, TODAY): 2}
    assert len(ip_session_counter.current()) == 0


def test_the_last_visit_before_a_quiet_spell_is_written_by_the_next_request_of_any_kind(
    app: Flask,
    session: Session,
    client: FlaskClient,
    clock: FixedClock,
    api_key: str,
    monotonic: FakeMonotonic,
) -> None:
    group = _office(session, clock)
    _visit(client, api_key, "81.2.69.1").close()
    client.get("/login").close()
    assert _sessions(session) == {}, "not before the interval is over"

    monotonic.value += 60
    client.get("/login").close()

    assert _sessions(session) == {(group.id, TODAY): 1}, "no second visit needed"
    assert len(ip_session_counter.current()) == 0


def test_a_content_site_check_of_a_reader_writes_the_waiting_visits_once_due(
    app: Flask,
    session: Session,
    client: FlaskClient,
    clock: FixedClock,
    api_key: str,
    monotonic: FakeMonotonic,
) -> None:
    """The API is an app of its own: its responses write what is waiting too, so a node that
    only answers the content site does not keep visits until it exits."""
    group = _office(session, clock)
    reader = factories.reader()
    headers = {"Authorization": f"Bearer {api_key}"}
    _visit(client, api_key, "81.2.69.1").close()

    monotonic.value += 60
    check = client.get(f"/api/v1/readers/{reader.public_id}/entitlement", headers=headers)
    assert check.status_code == 200
    check.close()

    assert _sessions(session) == {(group.id, TODAY): 1}
    assert len(ip_session_counter.current()) == 0


def test_a_failed_write_keeps_the_visits_for_the_next_flush(
    app: Flask, session: Session, clock: FixedClock, tmp_path: Any
) -> None:
    group = _office(session, clock)
    broken = sessionmaker(bind=db.make_engine(f"sqlite:///{tmp_path}/missing/db.sqlite3"))
    counter = IpSessionCounter(broken, key=KEY)
    counter.record(group.public_id, "81.2.69.1", clock.now())

    assert counter.flush() == 0
    assert len(counter) == 1

    counter._session_factory = app.extensions["db_sessionmaker"]
    assert counter.flush() == 1
    assert _sessions(session) == {(group.id, TODAY): 1}


def test_a_process_keeps_a_bounded_number_of_waiting_visits(
    app: Flask, monkeypatch: pytest.MonkeyPatch, clock: FixedClock
) -> None:
    monkeypatch.setattr(ip_session_counter, "MAX_PENDING", 3)
    monkeypatch.setattr(ip_session_counter, "FLUSH_AT", 2)
    counter = IpSessionCounter(app.extensions["db_sessionmaker"], key=KEY)

    due = [counter.record("grp_x", f"81.2.69.{n}", clock.now()) for n in range(5)]

    assert due == [False, True, False, False, False]
    assert (len(counter), counter.dropped) == (3, 2)


def test_tick_forgets_the_visitors_of_days_before_yesterday_and_keeps_the_counts(
    app: Flask, session: Session, clock: FixedClock, runner: Any
) -> None:
    group = _office(session, clock)
    for days_ago in (0, 1, 2):
        day = TODAY - timedelta(days=days_ago)
        ip_sessions.write_batch(session, [(group.public_id, day, "81.2.69.1")], key=KEY)
    session.commit()

    result = runner.invoke(args=["billing", "tick"])

    assert result.exit_code == 0, result.output
    session.expire_all()
    kept = session.scalars(select(GroupIPVisitor.day).order_by(GroupIPVisitor.day)).all()
    assert kept == [TODAY - timedelta(days=1), TODAY]
    assert session.scalar(select(func.sum(GroupIPSessions.sessions))) == 3


# --- what admins and staff see -----------------------------------------------------------------


def test_the_group_admin_sees_the_ip_sessions_of_the_last_30_days(
    app: Flask, session: Session, client: FlaskClient, clock: FixedClock
) -> None:
    group = _office(session, clock)
    visits = [(group.public_id, TODAY, f"81.2.69.{n}") for n in range(3)]
    visits += [(group.public_id, TODAY - timedelta(days=29), "81.2.69.1")]
    visits += [(group.public_id, TODAY - timedelta(days=30), "81.2.69.1")]
    ip_sessions.write_batch(session, visits, key=KEY)
    session.commit()
    admin = next(m.reader for m in groups.members(session, group) if m.role == MembershipRole.ADMIN)
    login(client, admin)

    page = client.get(f"/groups/{group.public_id}").get_data(as_text=True)

    assert 'data-ip-sessions="4"' in page
    assert f'data-ip-day="{TODAY.isoformat()}"' in page
    assert f'data-ip-day="{(TODAY - timedelta(days=29)).isoformat()}"' in page
    assert f'data-ip-day="{(TODAY - timedelta(days=30)).isoformat()}"' not in page


def test_the_groups_report_counts_the_ip_sessions_of_its_range(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    group = _office(session, clock)
    quiet = factories.group_with_seats(3)
    visits = [(group.public_id, date(2026, 11, 1), f"81.2.69.{n}") for n in range(2)]
    visits += [(group.public_id, date(2026, 11, 30), "81.2.69.1")]
    visits += [(group.public_id, date(2026, 12, 1), "81.2.69.1")]
    ip_sessions.write_batch(session, visits, key=KEY)
    session.flush()

    november = Filters(start=date(2026, 11, 1), end=date(2026, 11, 30))
    table = reports.get("groups").build(session, november, clock.now(), None)

    keys = [c.key for c in table.columns]
    by_group = {row[0]: dict(zip(keys, row, strict=True)) for row in table.rows}
    assert by_group[group.name]["ip_sessions"] == 3
    assert by_group[quiet.name]["ip_sessions"] == 0
    assert dict(zip(keys, table.totals[0], strict=True))["ip_sessions"] == 3
