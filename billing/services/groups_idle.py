"""Idle seats: members who stopped reading through the group, reclaimed by the admin or by
``tick``."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.errors import Conflict
from billing.models import (
    Group,
    GroupMembership,
    MembershipRole,
    Reader,
)
from billing.services import audit, mail
from billing.services.groups_seats import (
    GroupRules,
    lock_seats,
    members,
    remove_member,
    require_admin,
)


def idle_members(
    session: Session, group: Group, *, rules: GroupRules, now: datetime
) -> list[GroupMembership]:
    """Members (not admins, the group's anchors) who have not read through the group for
    ``rules.idle_days`` days (counting from joining when they never did)."""
    cutoff = now - timedelta(days=rules.idle_days)
    return [
        m
        for m in members(session, group)
        if m.role == MembershipRole.MEMBER and (m.last_read_at or m.joined_at) <= cutoff
    ]


def reclaim_idle_seat(
    session: Session,
    group: Group,
    admin: Reader,
    membership_id: int,
    *,
    rules: GroupRules,
    now: datetime,
) -> GroupMembership:
    """Free an idle member's seat in one click, telling the member."""
    if membership_id not in {m.id for m in idle_members(session, group, rules=rules, now=now)}:
        raise Conflict("This seat is not idle.")
    membership = remove_member(session, group, admin, membership_id, now=now)
    mail.send(
        session,
        membership.reader.email,
        "group_seat_reclaimed",
        key=f"group-seat-reclaimed-{membership.id}-{now.date().isoformat()}",
        group=group,
    )
    return membership


IDLE_WARNING = timedelta(days=7)
"""How long before automatic reclaiming a member is told their seat will be freed."""


def set_auto_reclaim(
    session: Session, group: Group, admin: Reader, enabled: bool, *, now: datetime
) -> None:
    """Whether ``tick`` frees idle seats itself, a week after telling the member."""
    require_admin(session, group, admin)
    group.auto_reclaim_idle = enabled
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.auto_reclaim",
        target=group,
        details={"enabled": enabled},
    )


def groups_reclaiming(session: Session) -> list[int]:
    """Ids of the groups that reclaim idle seats automatically."""
    return list(session.scalars(select(Group.id).where(Group.auto_reclaim_idle.is_(True))))


def reclaim_idle_automatically(
    session: Session, group_id: int, *, rules: GroupRules, now: datetime
) -> int:
    """For a group that asked for it: warn idle members (once), and free the seats of those who
    were warned ``IDLE_WARNING`` ago and have not read since. How many seats were freed."""
    group = session.get(Group, group_id)
    if group is None or not group.auto_reclaim_idle:
        return 0
    lock_seats(session, group, now)
    freed = 0
    for membership in idle_members(session, group, rules=rules, now=now):
        warned = membership.idle_warned_at
        if warned is None or (membership.last_read_at or membership.joined_at) > warned:
            membership.idle_warned_at = now
            mail.send(
                session,
                membership.reader.email,
                "group_seat_idle",
                key=f"group-seat-idle-{membership.id}-{now.date().isoformat()}",
                group=group,
                frees_on=now + IDLE_WARNING,
            )
        elif now - warned >= IDLE_WARNING:
            membership.removed_at = now
            audit.record(
                session,
                now=now,
                actor="tick",
                action="group.idle_seat_reclaimed",
                target=group,
                details={"member": membership.reader.email},
            )
            mail.send(
                session,
                membership.reader.email,
                "group_seat_reclaimed",
                key=f"group-seat-reclaimed-{membership.id}-{now.date().isoformat()}",
                group=group,
            )
            freed += 1
    session.flush()
    return freed


def note_reading(
    session: Session, reader: Reader, group_public_id: str | None, *, now: datetime
) -> None:
    """Record that ``reader`` read through the group (at most once an hour, to stay cheap)."""
    if group_public_id is None:
        return
    membership = session.scalar(
        select(GroupMembership)
        .join(Group, Group.id == GroupMembership.group_id)
        .where(Group.public_id == group_public_id, GroupMembership.reader_id == reader.id)
    )
    if membership is None:
        return
    if membership.last_read_at is None or now - membership.last_read_at >= timedelta(hours=1):
        membership.last_read_at = now
