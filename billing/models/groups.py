"""Organisations with group subscriptions: members, invites, allowed e-mail domains, IP ranges."""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.models.base import Base, enum_type, public_id_column
from billing.models.enums import MembershipRole

if TYPE_CHECKING:
    from billing.models.payments import Subscription
    from billing.models.readers import Reader


class Group(Base):
    """An organisation that buys seats; its seat count is its subscription's quantity."""

    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = public_id_column("grp")
    name: Mapped[str] = mapped_column(String(200))
    billing_email: Mapped[str] = mapped_column(String(320))
    vat_id: Mapped[str | None] = mapped_column(String(32))
    country: Mapped[str] = mapped_column(String(2))
    created_at: Mapped[datetime]
    admins_take_seat: Mapped[bool] = mapped_column(Boolean, default=True)
    """Whether an admin's membership counts against the seats (it does unless the admin says no)."""
    seats_full_mailed_at: Mapped[datetime | None]
    auto_reclaim_idle: Mapped[bool] = mapped_column(Boolean, default=False)
    """Whether ``tick`` frees idle seats itself (warning each member a week before)."""
    """When the admins were last told someone found no free seat (at most once a day)."""

    memberships: Mapped[list[GroupMembership]] = relationship(back_populates="group")
    domains: Mapped[list[GroupDomain]] = relationship(back_populates="group")
    ip_ranges: Mapped[list[GroupIPRange]] = relationship(back_populates="group")
    subscriptions: Mapped[list[Subscription]] = relationship(
        foreign_keys="Subscription.group_id", viewonly=True
    )

    __table_args__ = (CheckConstraint("length(country) = 2", name="country_iso2"),)


class GroupMembership(Base):
    """A reader's seat (or admin role) in a group; ``removed_at`` frees the seat."""

    __tablename__ = "group_memberships"

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), index=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("readers.id", ondelete="CASCADE"), index=True)
    role: Mapped[MembershipRole] = mapped_column(enum_type(MembershipRole, "membership_role"))
    joined_at: Mapped[datetime]
    removed_at: Mapped[datetime | None]
    last_read_at: Mapped[datetime | None]
    """When the member last read through the group (idle seats are measured from it)."""
    idle_warned_at: Mapped[datetime | None]
    """When the member was told their idle seat would be freed (automatic reclaiming)."""

    group: Mapped[Group] = relationship(back_populates="memberships")
    reader: Mapped[Reader] = relationship()

    __table_args__ = (UniqueConstraint("group_id", "reader_id"),)

    def is_current(self) -> bool:
        """Whether the membership still holds (not removed)."""
        return self.removed_at is None


class GroupInvite(Base):
    """A single-use, expiring invitation to take a seat in a group.

    The link carries a signed token; only its SHA-256 (``token_hash``) is stored.
    """

    __tablename__ = "group_invites"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = public_id_column("inv")
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    invited_by_id: Mapped[int | None] = mapped_column(ForeignKey("readers.id", ondelete="SET NULL"))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None]
    accepted_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("readers.id", ondelete="SET NULL")
    )
    revoked_at: Mapped[datetime | None]
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    sent_at: Mapped[datetime | None]

    __table_args__ = (CheckConstraint("expires_at > created_at", name="expires_after_creation"),)


class GroupDomain(Base):
    """An e-mail domain whose verified readers may join the group while seats are free.

    It takes effect once staff approve it (``approved_at``): claiming a domain is a trust decision.
    """

    __tablename__ = "group_domains"

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), index=True)
    domain: Mapped[str] = mapped_column(String(253), unique=True)
    created_at: Mapped[datetime]
    approved_at: Mapped[datetime | None]
    approved_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("readers.id", ondelete="SET NULL")
    )

    group: Mapped[Group] = relationship(back_populates="domains")


class GroupIPRange(Base):
    """An office network (IPv4 or IPv6 CIDR) whose anonymous visitors read as the group.

    ``first_address`` and ``last_address`` are the network's bounds as 32 hex digits (IPv4 too), so
    overlaps compare as text on every database; on PostgreSQL an exclusion constraint over
    ``cidr::cidr`` (GiST, ``inet_ops``) refuses overlapping rows whatever races (migration 0007).
    Ranges take effect once staff approve them (``approved_at``).
    """

    __tablename__ = "group_ip_ranges"

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), index=True)
    cidr: Mapped[str] = mapped_column(String(64))
    """Normalised network text as ``ipaddress.ip_network(...).compressed`` writes it."""
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    version: Mapped[int] = mapped_column(default=4)
    first_address: Mapped[str] = mapped_column(String(32), default="")
    last_address: Mapped[str] = mapped_column(String(32), default="")
    approved_at: Mapped[datetime | None]
    approved_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("readers.id", ondelete="SET NULL")
    )
    private_allowed: Mapped[bool] = mapped_column(Boolean, default=False)
    """Staff allowed a private or reserved network (a publisher's own intranet, say)."""

    group: Mapped[Group] = relationship(back_populates="ip_ranges")

    __table_args__ = (
        UniqueConstraint("group_id", "cidr"),
        CheckConstraint("version IN (4, 6)", name="version_known"),
        CheckConstraint("first_address <= last_address", name="bounds_ordered"),
        Index("ix_group_ip_ranges_bounds", "version", "first_address", "last_address"),
    )


class GroupIPSessions(Base):
    """How many anonymous IP sessions a group's office networks gave on one UTC day.

    A session is one visitor address reading through the group on one day, however many articles
    it opens (:mod:`billing.ip_sessions` counts them off the request path).
    """

    __tablename__ = "group_ip_sessions"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(primary_key=True)
    sessions: Mapped[int] = mapped_column(default=0)

    __table_args__ = (CheckConstraint("sessions >= 0", name="sessions_not_negative"),)


class GroupIPVisitor(Base):
    """A visitor already counted for a group on a day, so no process counts it twice.

    ``visitor`` is a keyed hash of the day and the address (never the address itself); rows of
    past days are pruned by ``tick`` once no process can still be flushing them.
    """

    __tablename__ = "group_ip_visitors"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(primary_key=True, index=True)
    visitor: Mapped[str] = mapped_column(String(32), primary_key=True)
