"""Invitations to take a seat in a group: signed links, single use, bound to the invited address.

Invite links are itsdangerous tokens with their own salt (:data:`INVITE_SALT`), stored only as a
SHA-256.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.errors import Conflict, DomainError, NotFound, ValidationFailed
from billing.models import (
    Group,
    GroupInvite,
    GroupMembership,
    Reader,
)
from billing.services import audit, mail
from billing.services.accounts import InvalidLink, dumps, loads, normalise_email
from billing.services.groups_seats import (
    GroupRules,
    claim_seat,
    lock_seats,
    members,
    require_admin,
    seats_in_use,
)
from billing.services.trials import EmailNotVerified

INVITE_SALT = "tollgate.group-invite.v1"


MAX_INVITES_AT_ONCE = 200


class InvalidInvite(DomainError):
    """An invitation link that is forged, expired, used, revoked or for another address."""

    code = "invalid_invite"


@dataclass
class InviteReport:
    """What became of each address of a (bulk) invitation."""

    sent: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


def pending_invites(session: Session, group: Group, now: datetime) -> list[GroupInvite]:
    """Invitations neither accepted, revoked nor expired, newest first."""
    return list(
        session.scalars(
            select(GroupInvite)
            .where(
                GroupInvite.group_id == group.id,
                GroupInvite.accepted_at.is_(None),
                GroupInvite.revoked_at.is_(None),
                GroupInvite.expires_at > now,
            )
            .order_by(GroupInvite.created_at.desc(), GroupInvite.id.desc())
        )
    )


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token(secret_keys: Sequence[str], invite: GroupInvite, now: datetime) -> str:
    token = dumps(secret_keys, INVITE_SALT, {"i": invite.public_id, "e": invite.email}, now)
    invite.token_hash = _token_hash(token)
    invite.sent_at = now
    return token


def invite(
    session: Session,
    group: Group,
    admin: Reader,
    addresses: str,
    *,
    secret_keys: Sequence[str],
    base_url: str,
    rules: GroupRules,
    now: datetime,
) -> InviteReport:
    """Invite every address in ``addresses`` (separated by commas, semicolons, spaces or lines).


    Each is validated and reported back: invalid ones, current members, addresses already invited
    and those beyond the free seats (members plus pending invites never exceed the seats) are
    refused with the reason; the others get a mail with their link.
    """
    require_admin(session, group, admin)
    seats = lock_seats(session, group, now)
    if seats == 0:
        raise Conflict("This organisation has no running subscription yet.")
    report = InviteReport()
    raw = [a for a in re.split(r"[\s,;]+", addresses or "") if a]
    if not raw:
        raise ValidationFailed("Enter at least one e-mail address.", field="emails")
    if len(raw) > MAX_INVITES_AT_ONCE:
        raise ValidationFailed(
            f"Invite at most {MAX_INVITES_AT_ONCE} addresses at once.", field="emails"
        )
    pending = {i.email for i in pending_invites(session, group, now)}
    current = {m.reader.email for m in members(session, group)}
    free = seats - seats_in_use(session, group) - len(pending)
    for address in dict.fromkeys(raw):
        try:
            email = normalise_email(address, field="emails")
        except ValidationFailed:
            report.refused.append((address, "not a valid e-mail address"))
            continue
        if email in current:
            report.refused.append((email, "already a member"))
        elif email in pending:
            report.refused.append((email, "already invited (resend it from the list)"))
        elif free <= 0:
            report.refused.append((email, "no seats left"))
        else:
            _send_invite(session, group, admin, email, secret_keys, base_url, rules, now)
            pending.add(email)
            free -= 1
            report.sent.append(email)
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.invited",
        target=group,
        details={"sent": report.sent, "refused": [a for a, _ in report.refused]},
    )
    return report


def _send_invite(
    session: Session,
    group: Group,
    admin: Reader,
    email: str,
    secret_keys: Sequence[str],
    base_url: str,
    rules: GroupRules,
    now: datetime,
) -> GroupInvite:
    entry = GroupInvite(
        group_id=group.id,
        email=email,
        invited_by_id=admin.id,
        created_at=now,
        expires_at=now + timedelta(days=rules.invite_days),
    )
    session.add(entry)
    session.flush()
    _mail_invite(session, group, admin, entry, secret_keys, base_url, now)
    return entry


def _mail_invite(
    session: Session,
    group: Group,
    admin: Reader,
    entry: GroupInvite,
    secret_keys: Sequence[str],
    base_url: str,
    now: datetime,
) -> None:
    token = _new_token(secret_keys, entry, now)
    session.flush()
    mail.send(
        session,
        entry.email,
        "group_invite",
        key=f"group-invite-{entry.public_id}-{entry.token_hash}",
        group=group,
        inviter=admin.name or admin.email,
        link=f"{base_url}/join/{token}",
        expires_at=entry.expires_at,
    )


def resend_invite(
    session: Session,
    group: Group,
    admin: Reader,
    invite_public_id: str,
    *,
    secret_keys: Sequence[str],
    base_url: str,
    rules: GroupRules,
    now: datetime,
) -> GroupInvite:
    """Mail a pending invitation again with a new link (the old link stops working); the
    invitation runs for ``rules.invite_days`` from now."""
    require_admin(session, group, admin)
    entry = _invite_of(session, group, invite_public_id)
    if entry.accepted_at is not None or entry.revoked_at is not None:
        raise Conflict("This invitation was already accepted or revoked.")
    entry.expires_at = now + timedelta(days=rules.invite_days)
    _mail_invite(session, group, admin, entry, secret_keys, base_url, now)
    return entry


def revoke_invite(
    session: Session, group: Group, admin: Reader, invite_public_id: str, *, now: datetime
) -> GroupInvite:
    """Withdraw a pending invitation: its link shows that it was revoked."""
    require_admin(session, group, admin)
    entry = _invite_of(session, group, invite_public_id)
    if entry.accepted_at is not None:
        raise Conflict("This invitation was already accepted: remove the member instead.")
    entry.revoked_at = entry.revoked_at or now
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.invite_revoked",
        target=group,
        details={"email": entry.email},
    )
    return entry


def _invite_of(session: Session, group: Group, invite_public_id: str) -> GroupInvite:
    entry = session.scalar(
        select(GroupInvite).where(
            GroupInvite.public_id == invite_public_id, GroupInvite.group_id == group.id
        )
    )
    if entry is None:
        raise NotFound("No such invitation.")
    return entry


def invite_for_token(
    session: Session, secret_keys: Sequence[str], token: str, *, now: datetime, rules: GroupRules
) -> GroupInvite:
    """The pending invitation a link token names; :class:`InvalidInvite` saying why not."""
    try:
        loads(secret_keys, INVITE_SALT, token, now, rules.invite_days * 86400)
    except InvalidLink as exc:
        expired = "expired" in exc.message
        raise InvalidInvite(
            "This invitation has expired: ask your organisation's admin for a new one."
            if expired
            else "This invitation link is not valid."
        ) from exc
    entry = session.scalar(select(GroupInvite).where(GroupInvite.token_hash == _token_hash(token)))
    if entry is None:
        raise InvalidInvite("This invitation link was replaced by a newer one, or is not valid.")
    if entry.revoked_at is not None:
        raise InvalidInvite("This invitation was withdrawn by the organisation's admin.")
    if entry.accepted_at is not None:
        raise InvalidInvite("This invitation was already used.")
    if now >= entry.expires_at:
        raise InvalidInvite(
            "This invitation has expired: ask your organisation's admin for a new one."
        )
    return entry


def accept_invite(
    session: Session,
    reader: Reader,
    secret_keys: Sequence[str],
    token: str,
    *,
    rules: GroupRules,
    now: datetime,
) -> GroupMembership:
    """Take the seat an invitation offers; only the invited (verified) address may."""
    entry = invite_for_token(session, secret_keys, token, now=now, rules=rules)
    if not reader.is_verified:
        raise EmailNotVerified("Please verify your e-mail address first: we sent you a link.")
    if reader.email != entry.email:
        raise InvalidInvite(
            "This invitation is for another address. Log in as the invited address to accept it."
        )
    group = session.get(Group, entry.group_id)
    assert group is not None
    # Lock before marking the invite used, so two tabs accepting it queue up here.
    lock_seats(session, group, now)
    session.refresh(entry)
    if entry.accepted_at is not None:
        raise InvalidInvite("This invitation was already used.")
    membership = claim_seat(session, group, reader, now=now)
    entry.accepted_at, entry.accepted_by_id = now, reader.id
    return membership
