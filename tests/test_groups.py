"""Groups: seats never oversold, invites, domains, office networks and the group decision."""

from __future__ import annotations

import ipaddress
import threading
from datetime import timedelta

import pytest
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from billing import db
from billing.clock import FixedClock
from billing.errors import Conflict, DomainError, ValidationFailed
from billing.models import Group, GroupInvite, GroupMembership, MembershipRole, SubscriptionStatus
from billing.services import decision_cache, groups
from billing.services.entitlements import Reason, decide
from billing.services.group_networks import NetworkIndex, NetworkRules, bounds, parse_network
from billing.services.groups import GroupRules, InvalidInvite, NoSeatsLeft
from tests import factories
from tests.conftest import TEST_SECRET, Outbox

RULES = GroupRules()
KEYS = [TEST_SECRET]
BASE = "http://localhost"


def _invite(session: Session, group: Group, admin_email: str, text: str, clock: FixedClock):
    admin = session.scalars(
        select(GroupMembership).where(
            GroupMembership.group_id == group.id, GroupMembership.role == MembershipRole.ADMIN
        )
    ).first()
    assert admin is not None
    return groups.invite(
        session,
        group,
        admin.reader,
        text,
        secret_keys=KEYS,
        base_url=BASE,
        rules=RULES,
        now=clock.now(),
    )


def _token(outbox: Outbox, to: str) -> str:
    return outbox.last_link(to, "/join/").rsplit("/", 1)[1]


def _admin_of(session: Session, group: Group):
    return next(m.reader for m in groups.members(session, group) if m.role == MembershipRole.ADMIN)


# --- invites ------------------------------------------------------------------------------------


def test_an_invited_reader_accepts_and_reads_as_the_group(
    app: Flask, session: Session, clock: FixedClock, outbox: Outbox
) -> None:
    group = factories.group_with_seats(3)
    colleague = factories.reader(email="ana@org.example")
    report = _invite(session, group, "", "ana@org.example", clock)
    assert report.sent == ["ana@org.example"]
    token = _token(outbox, "ana@org.example")
    stored = session.scalars(select(GroupInvite)).one()
    assert stored.token_hash is not None and token not in stored.token_hash

    groups.accept_invite(session, colleague, KEYS, token, rules=RULES, now=clock.now())
    session.flush()
    session.expire_all()
    decision = decide(colleague, clock.now())
    assert (decision.granted, decision.reason, decision.group) == (
        True,
        Reason.GROUP_SEAT,
        group.public_id,
    )


def test_a_member_whose_groups_payment_failed_beyond_the_grace_is_told_so(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    member = factories.reader(email="ana@org.example")
    group = factories.group_with_seats(3, admin=member)
    [subscription] = group.subscriptions
    subscription.status = SubscriptionStatus.PAST_DUE
    subscription.past_due_since = clock.now() - timedelta(days=8)
    session.flush()
    session.expire_all()

    decision = decide(member, clock.now(), past_due_grace=timedelta(days=7))

    assert (decision.granted, decision.reason) == (False, Reason.PAYMENT_FAILED)


def test_an_invite_link_works_once(
    app: Flask, session: Session, clock: FixedClock, outbox: Outbox
) -> None:
    group = factories.group_with_seats(3)
    colleague = factories.reader(email="ana@org.example")
    _invite(session, group, "", "ana@org.example", clock)
    token = _token(outbox, "ana@org.example")
    groups.accept_invite(session, colleague, KEYS, token, rules=RULES, now=clock.now())
    with pytest.raises(InvalidInvite, match="already used"):
        groups.accept_invite(session, colleague, KEYS, token, rules=RULES, now=clock.now())


def test_an_expired_invite_is_refused_after_seven_days(
    app: Flask, session: Session, clock: FixedClock, outbox: Outbox
) -> None:
    group = factories.group_with_seats(3)
    colleague = factories.reader(email="ana@org.example")
    _invite(session, group, "", "ana@org.example", clock)
    token = _token(outbox, "ana@org.example")
    later = clock.now() + timedelta(days=7, seconds=1)
    with pytest.raises(InvalidInvite, match="expired"):
        groups.accept_invite(session, colleague, KEYS, token, rules=RULES, now=later)
    just_in_time = clock.now() + timedelta(days=7, seconds=-1)
    groups.accept_invite(session, colleague, KEYS, token, rules=RULES, now=just_in_time)


def test_a_revoked_invite_is_refused(
    app: Flask, session: Session, clock: FixedClock, outbox: Outbox
) -> None:
    group = factories.group_with_seats(3)
    colleague = factories.reader(email="ana@org.example")
    _invite(session, group, "", "ana@org.example", clock)
    token = _token(outbox, "ana@org.example")
    entry = session.scalars(select(GroupInvite)).one()
    groups.revoke_invite(
        session, group, _admin_of(session, group), entry.public_id, now=clock.now()
    )
    with pytest.raises(InvalidInvite, match="withdrawn"):
        groups.accept_invite(session, colleague, KEYS, token, rules=RULES, now=clock.now())


def test_an_invite_for_another_address_is_refused(
    app: Flask, session: Session, clock: FixedClock, outbox: Outbox
) -> None:
    group = factories.group_with_seats(3)
    intruder = factories.reader(email="mallory@org.example")
    _invite(session, group, "", "ana@org.example", clock)
    token = _token(outbox, "ana@org.example")
    with pytest.raises(InvalidInvite, match="another address"):
        groups.accept_invite(session, intruder, KEYS, token, rules=RULES, now=clock.now())


def test_a_tampered_or_resent_link_is_refused(
    app: Flask, session: Session, clock: FixedClock, outbox: Outbox
) -> None:
    group = factories.group_with_seats(3)
    colleague = factories.reader(email="ana@org.example")
    _invite(session, group, "", "ana@org.example", clock)
    first = _token(outbox, "ana@org.example")
    with pytest.raises(InvalidInvite, match="not valid"):
        groups.accept_invite(
            session, colleague, KEYS, first[:-2] + "xx", rules=RULES, now=clock.now()
        )
    entry = session.scalars(select(GroupInvite)).one()
    groups.resend_invite(
        session,
        group,
        _admin_of(session, group),
        entry.public_id,
        secret_keys=KEYS,
        base_url=BASE,
        rules=RULES,
        now=clock.now() + timedelta(seconds=5),
    )
    with pytest.raises(InvalidInvite, match="replaced"):
        groups.accept_invite(session, colleague, KEYS, first, rules=RULES, now=clock.now())
    groups.accept_invite(
        session,
        colleague,
        KEYS,
        _token(outbox, "ana@org.example"),
        rules=RULES,
        now=clock.now() + timedelta(seconds=6),
    )


def test_a_bulk_invite_reports_each_address_and_never_invites_beyond_the_seats(
    app: Flask, session: Session, clock: FixedClock, outbox: Outbox
) -> None:
    group = factories.group_with_seats(3)  # the admin takes one seat
    report = _invite(
        session,
        group,
        "",
        "ana@org.example, not-an-address\nbo@org.example;ana@org.example cy@org.example",
        clock,
    )
    assert report.sent == ["ana@org.example", "bo@org.example"]
    assert dict(report.refused) == {
        "not-an-address": "not a valid e-mail address",
        "cy@org.example": "no seats left",
    }
    assert {m.to for m in outbox.all()} == {"ana@org.example", "bo@org.example"}


# --- seats --------------------------------------------------------------------------------------


def test_the_last_seat_refused_mails_the_admins_once_a_day(
    app: Flask, session: Session, clock: FixedClock, outbox: Outbox
) -> None:
    group = factories.group_with_seats(3)
    admin = _admin_of(session, group)
    for email in ("a@org.example", "b@org.example"):
        groups.claim_seat(session, group, factories.reader(email=email), now=clock.now())
    for email in ("c@org.example", "d@org.example"):
        with pytest.raises(NoSeatsLeft):
            groups.claim_seat(session, group, factories.reader(email=email), now=clock.now())
    assert [m.subject for m in outbox.all(admin.email)] == [
        f"{group.name}: someone could not get a seat"
    ]
    with pytest.raises(NoSeatsLeft):
        groups.claim_seat(session, group, factories.reader(), now=clock.now() + timedelta(days=1))
    assert len(outbox.all(admin.email)) == 2


def test_removing_a_member_frees_the_seat_and_refuses_their_access(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    group = factories.group_with_seats(2)
    member = factories.reader()
    membership = groups.claim_seat(session, group, member, now=clock.now())
    with pytest.raises(NoSeatsLeft):
        groups.claim_seat(session, group, factories.reader(), now=clock.now())
    groups.remove_member(session, group, _admin_of(session, group), membership.id, now=clock.now())
    groups.claim_seat(session, group, factories.reader(), now=clock.now())
    session.expire_all()
    assert decide(member, clock.now()).reason == Reason.SEAT_REMOVED


def test_a_group_always_keeps_one_admin(app: Flask, session: Session, clock: FixedClock) -> None:
    group = factories.group_with_seats(3)
    admin = _admin_of(session, group)
    mine = groups.members(session, group)[0]
    with pytest.raises(Conflict):
        groups.remove_member(session, group, admin, mine.id, now=clock.now())
    with pytest.raises(Conflict):
        groups.set_admin(session, group, admin, mine.id, False, now=clock.now())


def test_admins_who_take_no_seat_leave_it_to_a_member(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    group = factories.group_with_seats(1)
    admin = _admin_of(session, group)
    with pytest.raises(NoSeatsLeft):
        groups.claim_seat(session, group, factories.reader(), now=clock.now())
    groups.set_admins_take_seat(session, group, admin, False, now=clock.now())
    groups.claim_seat(session, group, factories.reader(), now=clock.now())
    with pytest.raises(NoSeatsLeft):
        groups.set_admins_take_seat(session, group, admin, True, now=clock.now())


def test_an_ended_group_subscription_ends_group_access_but_not_the_members_own(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    group = factories.group_with_seats(3)
    member = factories.reader()
    factories.GrantFactory(reader=member)
    groups.claim_seat(session, group, member, now=clock.now())
    later = clock.now() + timedelta(days=373)
    session.expire_all()
    assert decide(member, clock.now()).reason == Reason.GROUP_SEAT
    assert decide(member, later).reason == Reason.NONE  # grant of 90 days is over too
    assert decide(member, clock.now() + timedelta(days=1)).reason == Reason.GROUP_SEAT
    for sub in group.subscriptions:
        sub.ended_at = clock.now() + timedelta(days=2)
    session.flush()
    assert decide(member, clock.now() + timedelta(days=3)).reason == Reason.COMPLIMENTARY


def test_idle_members_are_listed_and_their_seat_reclaimed_with_a_mail(
    app: Flask, session: Session, clock: FixedClock, outbox: Outbox
) -> None:
    group = factories.group_with_seats(3)
    admin = _admin_of(session, group)
    reading = groups.claim_seat(session, group, factories.reader(), now=clock.now())
    idle = groups.claim_seat(
        session, group, factories.reader(email="z@org.example"), now=clock.now()
    )
    later = clock.now() + timedelta(days=RULES.idle_days)
    reading.last_read_at = later - timedelta(days=1)
    assert [m.id for m in groups.idle_members(session, group, rules=RULES, now=later)] == [idle.id]
    with pytest.raises(Conflict):
        groups.reclaim_idle_seat(session, group, admin, reading.id, rules=RULES, now=later)
    groups.reclaim_idle_seat(session, group, admin, idle.id, rules=RULES, now=later)
    assert idle.removed_at == later
    assert outbox.all("z@org.example")[-1].subject.startswith("Your seat in")


@pytest.mark.postgres_only
def test_fifty_readers_claiming_the_last_seat_at_once_give_it_to_exactly_one(
    app: Flask, clock: FixedClock, outbox: Outbox
) -> None:
    if db.engine().dialect.name != "postgresql":
        pytest.fail("run with TEST_DATABASE_URL pointing at PostgreSQL (make test does)")
    session = db.session()
    group = factories.group_with_seats(2)
    session.add(
        groups.GroupDomain(
            group_id=group.id,
            domain="race.example",
            created_at=clock.now(),
            approved_at=clock.now(),
        )
    )
    invited = [factories.reader(email=f"inv{n}@elsewhere.example") for n in range(25)]
    by_domain = [factories.reader(email=f"dom{n}@race.example") for n in range(25)]
    admin = _admin_of(session, group)
    tokens = []
    for reader in invited:
        entry = GroupInvite(
            group_id=group.id,
            email=reader.email,
            invited_by_id=admin.id,
            created_at=clock.now(),
            expires_at=clock.now() + timedelta(days=7),
        )
        session.add(entry)
        session.flush()
        tokens.append(groups._new_token(KEYS, entry, clock.now()))
    session.commit()
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    group_id, group_public_id = group.id, group.public_id
    engine = db.make_engine(str(app.config["DATABASE_URL"]), pool_size=55, max_overflow=0)
    sessions = sessionmaker(engine)
    decision_cache.track_changes(sessions)

    def claim(reader_id: int, token: str | None) -> None:
        with app.test_request_context():
            own = sessions()
            try:
                reader = own.get_one(type(admin), reader_id)
                barrier.wait(timeout=20)
                if token is None:
                    groups.join_by_domain(own, reader, group_public_id, now=clock.now())
                else:
                    groups.accept_invite(own, reader, KEYS, token, rules=RULES, now=clock.now())
                own.commit()
                outcomes.append("joined")
            except NoSeatsLeft:
                own.commit()
                outcomes.append("full")
            except DomainError as error:
                own.rollback()
                outcomes.append(f"error: {error.message}")
            finally:
                own.close()

    threads = [
        threading.Thread(target=claim, args=(r.id, t)) for r, t in zip(invited, tokens, strict=True)
    ]
    threads += [threading.Thread(target=claim, args=(r.id, None)) for r in by_domain]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    engine.dispose()
    assert sorted(outcomes).count("joined") == 1
    assert sorted(outcomes).count("full") == 49
    session.expire_all()
    current = session.scalars(
        select(GroupMembership).where(
            GroupMembership.group_id == group_id, GroupMembership.removed_at.is_(None)
        )
    ).all()
    assert len(current) == 2


@pytest.mark.postgres_only
def test_two_admins_registering_overlapping_ranges_at_once_leave_exactly_one(
    app: Flask, clock: FixedClock
) -> None:
    if db.engine().dialect.name != "postgresql":
        pytest.fail("run with TEST_DATABASE_URL pointing at PostgreSQL (make test does)")
    session = db.session()
    first, second = factories.group_with_seats(3), factories.group_with_seats(3)
    admins = [(g.id, _admin_of(session, g).id) for g in (first, second)]
    session.commit()
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def register(group_id: int, admin_id: int, cidr: str) -> None:
        with app.test_request_context():
            own = db.new_session()
            try:
                group = own.get_one(Group, group_id)
                admin = own.get_one(type(_admin_of(own, group)), admin_id)
                barrier.wait(timeout=10)
                groups.add_ip_range(own, group, admin, cidr, rules=RULES, now=clock.now())
                own.commit()
                outcomes.append("added")
            except Conflict:
                own.rollback()
                outcomes.append("overlap")
            finally:
                own.close()

    threads = [
        threading.Thread(target=register, args=(*admins[0], "81.2.69.0/24")),
        threading.Thread(target=register, args=(*admins[1], "81.2.69.128/25")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["added", "overlap"]


# --- domains ------------------------------------------------------------------------------------


def test_a_verified_reader_joins_by_exactly_the_approved_domain(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    group = factories.group_with_seats(3)
    admin = _admin_of(session, group)
    domain = groups.add_domain(session, group, admin, "@Org.Example.", now=clock.now())
    assert domain.domain == "org.example"
    colleague = factories.reader(email="ana@org.example")
    sub_domain = factories.reader(email="bo@lab.org.example")
    assert groups.joinable_groups(session, colleague) == []  # not approved yet
    groups.decide_domain(session, factories.reader(), domain.id, True, now=clock.now())
    assert groups.joinable_groups(session, colleague) == [group]
    assert groups.joinable_groups(session, sub_domain) == []
    groups.join_by_domain(session, colleague, group.public_id, now=clock.now())
    unverified = factories.reader(email="cy@org.example", email_verified_at=None)
    assert groups.joinable_groups(session, unverified) == []


@pytest.mark.parametrize("domain", ["gmail.com", "outlook.com", "not a domain", "org", "-x.org"])
def test_webmail_and_malformed_domains_are_refused(
    app: Flask, session: Session, clock: FixedClock, domain: str
) -> None:
    group = factories.group_with_seats(3)
    with pytest.raises(ValidationFailed) as refused:
        groups.add_domain(session, group, _admin_of(session, group), domain, now=clock.now())
    assert refused.value.field == "domain"


def test_a_domain_belongs_to_one_group_only(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    first, second = factories.group_with_seats(3), factories.group_with_seats(3)
    groups.add_domain(session, first, _admin_of(session, first), "org.example", now=clock.now())
    with pytest.raises(Conflict, match="another organisation"):
        groups.add_domain(
            session, second, _admin_of(session, second), "org.example", now=clock.now()
        )


# --- office networks ----------------------------------------------------------------------------

NETWORK_RULES = NetworkRules(16, 48)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.0/24", "Private"),
        ("192.168.1.0/24", "Private"),
        ("127.0.0.0/24", "Private"),
        ("fd00::/48", "Private"),
        ("198.50.0.0/15", "too wide"),
        ("2a00:1450::/47", "too wide"),
        ("81.2.69.1/24", "bits set"),
        ("not a network", "not an IP network"),
        ("", "Enter a network"),
    ],
)
def test_bad_office_ranges_are_refused_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(ValidationFailed, match=message) as refused:
        parse_network(text, NETWORK_RULES)
    assert refused.value.field == "cidr"


def test_the_widest_allowed_and_private_ranges_with_staff_permission_are_accepted() -> None:
    assert str(parse_network("8.8.0.0/16", NETWORK_RULES)) == "8.8.0.0/16"
    assert str(parse_network("2a00:1450::/48", NETWORK_RULES)) == "2a00:1450::/48"
    assert str(parse_network("10.0.0.0/8", NetworkRules(8, 48), allow_private=True)) == "10.0.0.0/8"


def test_overlapping_ranges_are_refused_whoever_registered_the_first(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    first, second = factories.group_with_seats(3), factories.group_with_seats(3)
    groups.add_ip_range(
        session, first, _admin_of(session, first), "81.2.69.0/24", rules=RULES, now=clock.now()
    )
    for text in ("81.2.69.255/32", "81.2.69.0/25", "81.2.0.0/16"):
        with pytest.raises(Conflict, match="another organisation"):
            groups.add_ip_range(
                session, second, _admin_of(session, second), text, rules=RULES, now=clock.now()
            )
    with pytest.raises(Conflict, match="your organisation"):
        groups.add_ip_range(
            session, first, _admin_of(session, first), "81.2.69.7/32", rules=RULES, now=clock.now()
        )
    groups.add_ip_range(
        session, second, _admin_of(session, second), "81.2.70.0/24", rules=RULES, now=clock.now()
    )


def test_anonymous_visitors_from_an_approved_range_read_as_the_group_at_its_edges(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    group = factories.group_with_seats(3)
    admin = _admin_of(session, group)
    v4 = groups.add_ip_range(session, group, admin, "81.2.69.0/24", rules=RULES, now=clock.now())
    v6 = groups.add_ip_range(
        session, group, admin, "2a00:1450:4001::/48", rules=RULES, now=clock.now()
    )
    session.commit()
    cache = decision_cache.current()
    assert cache.lookup_ip(session, "81.2.69.1", clock.now()).reason == Reason.NONE
    staff = factories.reader()
    groups.decide_ip_range(session, staff, v4.id, True, now=clock.now())
    groups.decide_ip_range(session, staff, v6.id, True, now=clock.now())
    session.commit()
    cache._next_poll = 0
    inside = [
        "81.2.69.0",
        "81.2.69.255",
        "2a00:1450:4001::",
        "2a00:1450:4001:ffff:ffff:ffff:ffff:ffff",
        "::ffff:81.2.69.9",
    ]
    outside = ["81.2.68.255", "81.2.70.0", "2a00:1450:4002::", "2a00:1450:4000:ffff::1"]
    for address in inside:
        decision = cache.lookup_ip(session, address, clock.now())
        assert (decision.reason, decision.group) == (Reason.GROUP_IP, group.public_id), address
    for address in outside:
        assert cache.lookup_ip(session, address, clock.now()).reason == Reason.NONE, address


def test_a_change_to_one_group_keeps_other_readers_cached(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    group = factories.group_with_seats(3)
    member, stranger = factories.reader(), factories.reader()
    groups.claim_seat(session, group, member, now=clock.now())
    session.commit()
    cache = decision_cache.current()
    cache.lookup(session, member.public_id, clock.now())
    cache._next_poll = 0
    cache.lookup(session, stranger.public_id, clock.now())
    assert len(cache) == 2
    for sub in group.subscriptions:
        sub.quantity = 4
    session.commit()
    cache._next_poll = 0
    cache.lookup_ip(session, "192.0.2.1", clock.now())
    assert stranger.public_id in cache._entries
    assert member.public_id not in cache._entries


@settings(max_examples=60, deadline=None)
@given(
    starts=st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=0, max_size=40),
    probes=st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=1, max_size=40),
    prefix=st.integers(min_value=16, max_value=32),
)
def test_the_bisect_lookup_agrees_with_a_scan_of_every_range(
    starts: list[int], probes: list[int], prefix: int
) -> None:
    networks: list[ipaddress.IPv4Network] = []
    for start in starts:
        candidate = ipaddress.ip_network((start, prefix), strict=False)
        assert isinstance(candidate, ipaddress.IPv4Network)
        if not any(candidate.overlaps(n) for n in networks):
            networks.append(candidate)
    index = NetworkIndex((4, *bounds(n), gid) for gid, n in enumerate(networks))
    for probe in probes + [int(n.broadcast_address) for n in networks]:
        address = ipaddress.IPv4Address(probe)
        expected = next((gid for gid, n in enumerate(networks) if address in n), None)
        assert index.find(str(address)) == expected
    if networks:
        index.replace_group(0, [])
        assert index.find(str(networks[0].network_address)) is None


def test_automatic_reclaiming_warns_an_idle_member_a_week_before_and_spares_one_who_reads(
    app: Flask, session: Session, clock: FixedClock, outbox: Outbox
) -> None:
    group = factories.group_with_seats(4)
    admin = _admin_of(session, group)
    sleeper = groups.claim_seat(
        session, group, factories.reader(email="z@org.example"), now=clock.now()
    )
    waker = groups.claim_seat(
        session, group, factories.reader(email="w@org.example"), now=clock.now()
    )
    groups.set_auto_reclaim(session, group, admin, True, now=clock.now())
    idle_at = clock.now() + timedelta(days=RULES.idle_days)
    assert groups.reclaim_idle_automatically(session, group.id, rules=RULES, now=idle_at) == 0
    assert [m.subject for m in outbox.all("z@org.example")][-1].startswith("Your seat in")
    assert sleeper.idle_warned_at == idle_at and sleeper.removed_at is None
    waker.last_read_at = idle_at + timedelta(days=1)
    a_week_later = idle_at + groups.IDLE_WARNING
    assert (
        groups.reclaim_idle_automatically(
            session, group.id, rules=RULES, now=a_week_later - timedelta(seconds=1)
        )
        == 0
    )
    assert groups.reclaim_idle_automatically(session, group.id, rules=RULES, now=a_week_later) == 1
    assert sleeper.removed_at == a_week_later
    assert waker.removed_at is None
    assert outbox.all("z@org.example")[-1].subject == f"Your seat in {group.name} was freed"
