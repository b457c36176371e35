"""Readers (people with an account, staff included) and their card-less trials."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.models.base import Base, enum_type, public_id_column
from billing.models.enums import StaffRole, TrialStatus

if TYPE_CHECKING:
    from billing.models.grants import ComplimentaryGrant
    from billing.models.groups import GroupMembership
    from billing.models.payments import Customer, Subscription


def new_session_token() -> str:
    """A random value identifying a reader's login sessions; rotating it logs every session out."""
    return secrets.token_urlsafe(24)


class Reader(Base):
    """A person with an account: reader, group member or admin, staff."""

    __tablename__ = "readers"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = public_id_column("rdr")
    email: Mapped[str] = mapped_column(String(320), unique=True)
    """Trimmed and lower-cased: the login identity."""
    email_canonical: Mapped[str] = mapped_column(String(320), index=True)
    """The person behind the address (gmail dots and plus-tags removed): trial eligibility."""
    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))
    password_hash: Mapped[str] = mapped_column(String(255))
    session_token: Mapped[str] = mapped_column(String(64), unique=True, default=new_session_token)
    email_verified_at: Mapped[datetime | None]
    staff_role: Mapped[StaffRole] = mapped_column(
        enum_type(StaffRole, "staff_role"), default=StaffRole.NONE
    )
    created_at: Mapped[datetime]

    trial: Mapped[Trial | None] = relationship(back_populates="reader", uselist=False)
    customer: Mapped[Customer | None] = relationship(back_populates="reader", uselist=False)
    subscriptions: Mapped[list[Subscription]] = relationship(
        foreign_keys="Subscription.reader_id", viewonly=True
    )
    grants: Mapped[list[ComplimentaryGrant]] = relationship(
        back_populates="reader", foreign_keys="ComplimentaryGrant.reader_id"
    )
    group_memberships: Mapped[list[GroupMembership]] = relationship(
        foreign_keys="GroupMembership.reader_id", viewonly=True
    )

    __table_args__ = (CheckConstraint("length(country) = 2", name="country_iso2"),)

    @property
    def is_verified(self) -> bool:
        """Whether the reader proved they own their e-mail address."""
        return self.email_verified_at is not None

    @property
    def is_staff(self) -> bool:
        """Whether the reader has any staff role."""
        return self.staff_role != StaffRole.NONE

    # Flask-Login protocol ---------------------------------------------------------------------
    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self) -> str:
        """The value kept in the login session: rotating ``session_token`` invalidates it."""
        return self.session_token


class Trial(Base):
    """The one free trial a person ever gets; survives deletion of the account that took it."""

    __tablename__ = "trials"

    id: Mapped[int] = mapped_column(primary_key=True)
    reader_id: Mapped[int | None] = mapped_column(
        ForeignKey("readers.id", ondelete="SET NULL"), unique=True
    )
    email_canonical: Mapped[str] = mapped_column(String(320), unique=True)
    status: Mapped[TrialStatus] = mapped_column(
        enum_type(TrialStatus, "trial_status"), default=TrialStatus.ACTIVE
    )
    started_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    converted_at: Mapped[datetime | None]
    reminder_sent_at: Mapped[datetime | None]
    ended_mail_sent_at: Mapped[datetime | None]

    reader: Mapped[Reader | None] = relationship(back_populates="trial")

    __table_args__ = (
        CheckConstraint("ends_at > started_at", name="ends_after_start"),
        Index("ix_trials_status_ends_at", "status", "ends_at"),
    )

    def status_at(self, now: datetime) -> TrialStatus:
        """The state at ``now``: an active trial whose time is over has expired, tick or not."""
        if self.status == TrialStatus.ACTIVE and now >= self.ends_at:
            return TrialStatus.EXPIRED
        return self.status

    def is_active(self, now: datetime) -> bool:
        """Whether the trial gives access at ``now``."""
        return self.status == TrialStatus.ACTIVE and self.started_at <= now < self.ends_at

    def days_left(self, now: datetime) -> int:
        """Whole days of access left, counting a started day as a day (0 once it has ended)."""
        if not self.is_active(now):
            return 0
        remaining = self.ends_at - now
        return remaining.days + (1 if remaining.seconds or remaining.microseconds else 0)
