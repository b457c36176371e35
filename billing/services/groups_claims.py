"""What an organisation claims: e-mail domains whose readers may join, and office networks whose
visitors read as the group. Both take effect once staff approve them (a claim is a trust
decision)."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from billing.errors import Conflict, NotFound, ValidationFailed
from billing.models import (
    Group,
    GroupDomain,
    GroupIPRange,
    GroupMembership,
    Reader,
)
from billing.services import audit
from billing.services.group_networks import bounds, parse_network
from billing.services.groups_seats import GroupRules, claim_seat, require_admin

ClaimT = TypeVar("ClaimT", GroupDomain, GroupIPRange)
"""A group's claim on its readers: an e-mail domain or an office network."""

WEBMAIL_DOMAINS = frozenset(
    {
        "aol.com", "gmail.com", "googlemail.com", "gmx.com", "gmx.de", "gmx.net", "hotmail.com",
        "hotmail.fr", "icloud.com", "laposte.net", "libero.it", "live.com", "mail.com",
        "mail.ru", "me.com", "msn.com", "orange.fr", "outlook.com", "proton.me",
        "protonmail.com", "t-online.de", "web.de", "yahoo.com", "yahoo.fr", "yandex.com",
        "yandex.ru", "zoho.com",
    }
)  # fmt: skip
"""Public webmail providers: anyone can have an address there, so no group may claim them."""


_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def clean_domain(text: str) -> str:
    """``text`` as a lower-case domain name; refuses malformed ones and public webmail."""
    value = (text or "").strip().lower().removeprefix("@").rstrip(".")
    try:
        value = value.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValidationFailed("This is not a domain name.", field="domain") from exc
    if not _DOMAIN.fullmatch(value):
        raise ValidationFailed("This is not a domain name such as example.org.", field="domain")
    if value in WEBMAIL_DOMAINS:
        raise ValidationFailed(
            "Public webmail domains cannot be allowed: anyone can have an address there.",
            field="domain",
        )
    return value


def add_domain(
    session: Session, group: Group, admin: Reader, text: str, *, now: datetime
) -> GroupDomain:
    """Ask for ``text`` to be allowed; it takes effect when staff approve it."""
    require_admin(session, group, admin)
    domain = clean_domain(text)
    taken = session.scalar(select(GroupDomain).where(GroupDomain.domain == domain))
    if taken is not None:
        raise Conflict(
            "This domain is already registered"
            + (
                " for your organisation."
                if taken.group_id == group.id
                else " by another organisation."
            ),
            field="domain",
        )
    entry = GroupDomain(group_id=group.id, domain=domain, created_at=now)
    try:
        with session.begin_nested():
            session.add(entry)
    except IntegrityError as exc:
        raise Conflict("This domain is already registered.", field="domain") from exc
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.domain_added",
        target=group,
        details={"domain": domain},
    )
    return entry


def remove_domain(
    session: Session, group: Group, admin: Reader, domain_id: int, *, now: datetime
) -> None:
    """Stop allowing a domain (members who joined by it keep their seat)."""
    entry = _remove_claim(session, group, admin, GroupDomain, domain_id, "domain")
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.domain_removed",
        target=group,
        details={"domain": entry.domain},
    )


def joinable_groups(session: Session, reader: Reader) -> list[Group]:
    """Groups whose approved domain is exactly the verified reader's e-mail domain."""
    if not reader.is_verified:
        return []
    domain = reader.email.rpartition("@")[2]
    return list(
        session.scalars(
            select(Group)
            .join(GroupDomain, GroupDomain.group_id == Group.id)
            .where(GroupDomain.domain == domain, GroupDomain.approved_at.is_not(None))
        )
    )


def join_by_domain(
    session: Session, reader: Reader, group_public_id: str, *, now: datetime
) -> GroupMembership:
    """Take a seat in a group that allows the reader's e-mail domain, while seats are free."""
    group = next(
        (g for g in joinable_groups(session, reader) if g.public_id == group_public_id), None
    )
    if group is None:
        raise NotFound("Your e-mail address gives you no seat in this organisation.")
    return claim_seat(session, group, reader, now=now)


def add_ip_range(
    session: Session,
    group: Group,
    admin: Reader,
    text: str,
    *,
    label: str = "",
    rules: GroupRules,
    now: datetime,
) -> GroupIPRange:
    """Register an office network; it takes effect when staff approve it.


    Refused when it overlaps any registered range (this group's or another's): checked here in
    the transaction, and on PostgreSQL by the exclusion constraint, which no race can pass.
    """
    require_admin(session, group, admin)
    network = parse_network(text, rules.networks)
    return _insert_range(session, group, network, label, now, admin)


def _insert_range(
    session: Session,
    group: Group,
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
    label: str,
    now: datetime,
    actor: Reader | str,
    *,
    private_allowed: bool = False,
) -> GroupIPRange:
    first, last = bounds(network)
    clash = session.scalar(
        select(GroupIPRange).where(
            GroupIPRange.version == network.version,
            GroupIPRange.first_address <= last,
            GroupIPRange.last_address >= first,
        )
    )
    if clash is not None:
        raise _overlap(clash.group_id == group.id)
    entry = GroupIPRange(
        group_id=group.id,
        cidr=network.compressed,
        label=" ".join((label or "").split())[:200] or None,
        created_at=now,
        version=network.version,
        first_address=first,
        last_address=last,
        private_allowed=private_allowed,
    )
    try:
        with session.begin_nested():
            session.add(entry)
    except IntegrityError as exc:
        raise _overlap(False) from exc
    except OperationalError as exc:
        # Two transactions inserting overlapping rows at once wait on each other's exclusion
        # check; PostgreSQL aborts one of them: that one overlaps the other.
        if getattr(exc.orig, "sqlstate", None) != "40P01":
            raise
        raise _overlap(False) from exc
    audit.record(
        session,
        now=now,
        actor=actor,
        action="group.ip_range_added",
        target=group,
        details={"cidr": entry.cidr},
    )
    return entry


def _overlap(own: bool) -> Conflict:
    whose = (
        "one of your organisation's ranges" if own else "a range registered by another organisation"
    )
    return Conflict(f"This range overlaps {whose}.", field="cidr", code="ip_range_overlap")


def remove_ip_range(
    session: Session, group: Group, admin: Reader, range_id: int, *, now: datetime
) -> None:
    """Unregister an office network (its visitors lose access at once)."""
    entry = _remove_claim(session, group, admin, GroupIPRange, range_id, "range")
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.ip_range_removed",
        target=group,
        details={"cidr": entry.cidr},
    )


def _remove_claim(
    session: Session,
    group: Group,
    admin: Reader,
    model: type[ClaimT],
    claim_id: int,
    what: str,
) -> ClaimT:
    """Delete one of ``group``'s claims (a domain or an office range, by id) for its admin; the
    deleted row. ``NotFound`` (``No such {what}.``) for another group's or a missing one."""
    require_admin(session, group, admin)
    entry = session.get(model, claim_id)
    if entry is None or entry.group_id != group.id:
        raise NotFound(f"No such {what}.")
    session.delete(entry)
    return entry


def pending_approvals(session: Session) -> tuple[list[GroupDomain], list[GroupIPRange]]:
    """Domains and office ranges waiting for staff, oldest first."""
    domains = session.scalars(
        select(GroupDomain)
        .where(GroupDomain.approved_at.is_(None))
        .order_by(GroupDomain.created_at)
    )
    ranges = session.scalars(
        select(GroupIPRange)
        .where(GroupIPRange.approved_at.is_(None))
        .order_by(GroupIPRange.created_at)
    )
    return list(domains), list(ranges)


def decide_domain(
    session: Session, staff: Reader, domain_id: int, approve: bool, *, now: datetime
) -> GroupDomain:
    """Approve a domain claim (it takes effect), or refuse it (it is deleted)."""
    entry = session.get(GroupDomain, domain_id)
    if entry is None:
        raise NotFound("No such domain.")
    _decide_claim(session, staff, entry, approve, "domain", {"domain": entry.domain}, now=now)
    return entry


def decide_ip_range(
    session: Session, staff: Reader, range_id: int, approve: bool, *, now: datetime
) -> GroupIPRange:
    """Approve an office range (its visitors read as the group), or refuse it (deleted)."""
    entry = session.get(GroupIPRange, range_id)
    if entry is None:
        raise NotFound("No such range.")
    _decide_claim(session, staff, entry, approve, "ip_range", {"cidr": entry.cidr}, now=now)
    return entry


def _decide_claim(
    session: Session,
    staff: Reader,
    entry: GroupDomain | GroupIPRange,
    approve: bool,
    kind: str,
    details: dict[str, Any],
    *,
    now: datetime,
) -> None:
    """Staff's decision on a group's claim, audit-logged: approved (kept, dated) or refused
    (deleted)."""
    audit.record(
        session,
        now=now,
        actor=staff,
        action=f"group.{kind}_" + ("approved" if approve else "refused"),
        target=entry.group,
        details=details,
    )
    if approve:
        entry.approved_at, entry.approved_by_id = entry.approved_at or now, staff.id
    else:
        session.delete(entry)


def staff_add_private_range(
    session: Session,
    staff: Reader,
    group: Group,
    text: str,
    *,
    label: str,
    rules: GroupRules,
    now: datetime,
) -> GroupIPRange:
    """Staff register (and approve) a range, private and reserved ones allowed."""
    network = parse_network(text, rules.networks, allow_private=True)
    entry = _insert_range(session, group, network, label, now, staff, private_allowed=True)
    entry.approved_at, entry.approved_by_id = now, staff.id
    return entry
