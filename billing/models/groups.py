"""Organisations with group subscriptions: members, invites, allowed e-mail domains, IP ranges."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.models.base import Base, enum_type, public_id_column
from billing.models.enums import MembershipRole

if TYPE_CHECKING:
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

    memberships: Mapped[list[GroupMembership]] = relationship(back_populates="group")
    domains: Mapped[list[GroupDomain]] = relationship(back_populates="group")
    ip_ranges: Mapped[list[GroupIPRange]] = relationship(back_populates="group")

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

    group: Mapped[Group] = relationship(back_populates="memberships")
    reader: Mapped[Reader] = relationship()

    __table_args__ = (UniqueConstraint("group_id", "reader_id"),)


class GroupInvite(Base):
    """A single-use, expiring invitation to take a seat in a group."""

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

    __table_args__ = (CheckConstraint("expires_at > created_at", name="expires_after_creation"),)


class GroupDomain(Base):
    """An e-mail domain whose verified readers may join the group while seats are free."""

    __tablename__ = "group_domains"

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), index=True)
    domain: Mapped[str] = mapped_column(String(253), unique=True)
    created_at: Mapped[datetime]

    group: Mapped[Group] = relationship(back_populates="domains")


class GroupIPRange(Base):
    """An office network (IPv4 or IPv6 CIDR) whose anonymous visitors read as the group."""

    __tablename__ = "group_ip_ranges"

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), index=True)
    cidr: Mapped[str] = mapped_column(String(64))
    """Normalised network text as ``ipaddress.ip_network(...).compressed`` writes it."""
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]

    group: Mapped[Group] = relationship(back_populates="ip_ranges")

    __table_args__ = (UniqueConstraint("group_id", "cidr"),)
