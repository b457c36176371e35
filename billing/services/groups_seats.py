"""A group and its seats: members, admins, and claiming a seat without ever overselling.

Every claim of a seat (an invite accepted, a domain join) and every change of the seat count
locks the group's subscription row (:func:`lock_seats`, ``SELECT ... FOR UPDATE``) before
counting, so on PostgreSQL the last seat goes to exactly one of many claimants; SQLite runs one
writing transaction at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.errors import Conflict, Forbidden, NotFound
from billing.models import (
    Group,
    GroupMembership,
    MembershipRole,
    Reader,
    Subscription,
)
from billing.services import audit, mail
from billing.services.group_networks import NetworkRules


class NoSeatsLeft(Conflict):
    """Every seat of the group is taken."""

    code = "no_seats_left"


@dataclass(frozen=True)
class GroupRules:
    """The group settings of the running app."""

    min_seats: int = 3
    invite_days: int = 7
    days_until_due: int = 30
    idle_days: int = 60
    networks: NetworkRules = field(default_factory=NetworkRules)

    @classmethod
    def from_config(cls, config: Any) -> GroupRules:
        """The rules set by ``GROUP_*`` settings."""
        return cls(
            min_seats=int(config["GROUP_MIN_SEATS"]),
            invite_days=int(config["GROUP_INVITE_DAYS"]),
            days_until_due=int(config["GROUP_INVOICE_DAYS_UNTIL_DUE"]),
            idle_days=int(config["GROUP_IDLE_DAYS"]),
            networks=NetworkRules(
                int(config["GROUP_WIDEST_IPV4"]), int(config["GROUP_WIDEST_IPV6"])
            ),
        )


def by_public_id(session: Session, public_id: str) -> Group | None:
    """The group with ``public_id``."""
    return session.scalar(select(Group).where(Group.public_id == public_id))


def current_subscription(session: Session, group: Group, now: datetime) -> Subscription | None:
    """The group's newest subscription that has not ended."""
    rows = session.scalars(
        select(Subscription)
        .where(Subscription.group_id == group.id)
        .order_by(Subscription.created_at.desc(), Subscription.id.desc())
    )
    return next((s for s in rows if not s.has_ended(now)), None)


def seat_count(session: Session, group: Group, now: datetime) -> int:
    """Seats bought: the running subscription's quantity (0 without one)."""
    subscription = current_subscription(session, group, now)
    return subscription.quantity if subscription is not None else 0


def seats_in_use(session: Session, group: Group) -> int:
    """Current members holding a seat (admins too, unless admins take no seat)."""
    query = select(func.count(GroupMembership.id)).where(
        GroupMembership.group_id == group.id, GroupMembership.removed_at.is_(None)
    )
    if not group.admins_take_seat:
        query = query.where(GroupMembership.role == MembershipRole.MEMBER)
    return int(session.scalar(query) or 0)


def members(session: Session, group: Group) -> list[GroupMembership]:
    """Current memberships, admins first, then by joining date."""
    return list(
        session.scalars(
            select(GroupMembership)
            .where(GroupMembership.group_id == group.id, GroupMembership.removed_at.is_(None))
            .order_by(GroupMembership.role, GroupMembership.joined_at, GroupMembership.id)
        )
    )


def groups_of(session: Session, reader: Reader) -> list[tuple[Group, MembershipRole]]:
    """The groups ``reader`` currently belongs to, with their role."""
    rows = session.execute(
        select(Group, GroupMembership.role)
        .join(GroupMembership, GroupMembership.group_id == Group.id)
        .where(GroupMembership.reader_id == reader.id, GroupMembership.removed_at.is_(None))
        .order_by(Group.name)
    )
    return list(rows)


def require_admin(session: Session, group: Group, reader: Reader) -> GroupMembership:
    """The reader's admin membership of ``group``; NotFound for anyone else (no probing)."""
    membership = _membership(session, group, reader)
    if membership is None or membership.removed_at is not None:
        raise NotFound("No such organisation.")
    if membership.role != MembershipRole.ADMIN:
        raise Forbidden("Only the organisation's admins can do this.")
    return membership


def _membership(session: Session, group: Group, reader: Reader) -> GroupMembership | None:
    return session.scalar(
        select(GroupMembership).where(
            GroupMembership.group_id == group.id, GroupMembership.reader_id == reader.id
        )
    )


def lock_seats(session: Session, group: Group, now: datetime) -> int:
    """Lock the group's running subscription row and return its seats (0 without one)."""
    subscription = current_subscription(session, group, now)
    if subscription is None:
        return 0
    locked = session.scalar(
        select(Subscription.quantity)
        .where(Subscription.id == subscription.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return int(locked or 0)


def claim_seat(
    session: Session,
    group: Group,
    reader: Reader,
    *,
    now: datetime,
    role: MembershipRole = MembershipRole.MEMBER,
) -> GroupMembership:
    """Give ``reader`` a seat in ``group`` (idempotent for a current member).


    Raises :class:`NoSeatsLeft` when every seat is taken, after mailing the admins (once a day at
    most): the caller commits before showing the refusal, so that mail is not lost.
    """
    seats = lock_seats(session, group, now)
    membership = _membership(session, group, reader)
    if membership is not None and membership.removed_at is None:
        return membership
    takes_seat = role == MembershipRole.MEMBER or group.admins_take_seat
    if takes_seat and seats_in_use(session, group) >= seats:
        _tell_admins_seats_are_full(session, group, reader, now)
        raise NoSeatsLeft("No seats are left in this organisation: ask your admin for one.")
    if membership is None:
        membership = GroupMembership(
            group_id=group.id, reader_id=reader.id, role=role, joined_at=now
        )
        session.add(membership)
    else:
        membership.removed_at, membership.role, membership.joined_at = None, role, now
    session.flush()
    audit.record(
        session,
        now=now,
        actor=reader,
        action="group.joined",
        target=group,
        details={"role": role.value},
    )
    return membership


def _tell_admins_seats_are_full(
    session: Session, group: Group, reader: Reader, now: datetime
) -> None:
    last = group.seats_full_mailed_at
    if last is not None and now - last < timedelta(days=1):
        return
    group.seats_full_mailed_at = now
    for admin in admins_of(session, group):
        mail.send(
            session,
            admin.reader.email,
            "group_seats_full",
            key=f"group-seats-full-{group.public_id}-{now.date().isoformat()}-{admin.reader_id}",
            group=group,
            who=reader.email,
        )


def admins_of(session: Session, group: Group) -> list[GroupMembership]:
    """The group's current admins."""
    return [m for m in members(session, group) if m.role == MembershipRole.ADMIN]


def remove_member(
    session: Session, group: Group, admin: Reader, membership_id: int, *, now: datetime
) -> GroupMembership:
    """Take the seat away from a member (freed at once); a group always keeps one admin."""
    require_admin(session, group, admin)
    lock_seats(session, group, now)
    membership = session.get(GroupMembership, membership_id)
    if membership is None or membership.group_id != group.id or membership.removed_at is not None:
        raise NotFound("No such member.")
    if membership.role == MembershipRole.ADMIN and len(admins_of(session, group)) <= 1:
        raise Conflict("An organisation keeps at least one admin: make someone else admin first.")
    membership.removed_at = now
    session.flush()
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.member_removed",
        target=group,
        details={"member": membership.reader.email},
    )
    return membership


def set_admin(
    session: Session,
    group: Group,
    admin: Reader,
    membership_id: int,
    make_admin: bool,
    *,
    now: datetime,
) -> GroupMembership:
    """Make a member an admin, or an admin a member again (a group always keeps one admin)."""
    require_admin(session, group, admin)
    seats = lock_seats(session, group, now)
    membership = session.get(GroupMembership, membership_id)
    if membership is None or membership.group_id != group.id or membership.removed_at is not None:
        raise NotFound("No such member.")
    role = MembershipRole.ADMIN if make_admin else MembershipRole.MEMBER
    if membership.role == role:
        return membership
    if not make_admin and len(admins_of(session, group)) <= 1:
        raise Conflict("An organisation keeps at least one admin.")
    if not make_admin and not group.admins_take_seat and seats_in_use(session, group) >= seats:
        raise NoSeatsLeft("No seat is free for this admin to become a member.")
    membership.role = role
    session.flush()
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.role_changed",
        target=group,
        details={"member": membership.reader.email, "role": role.value},
    )
    return membership


def set_admins_take_seat(
    session: Session, group: Group, admin: Reader, take_seat: bool, *, now: datetime
) -> None:
    """Whether admins count against the seats; refused when the members would not fit."""
    require_admin(session, group, admin)
    seats = lock_seats(session, group, now)
    before = group.admins_take_seat
    group.admins_take_seat = take_seat
    if take_seat and not before and seats_in_use(session, group) > seats:
        group.admins_take_seat = before
        raise NoSeatsLeft("Admins cannot take seats: there are not enough free seats.")
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.admins_take_seat",
        target=group,
        details={"take_seat": take_seat},
    )
