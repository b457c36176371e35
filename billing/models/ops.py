"""Operational records: Stripe webhook events, API clients, the audit log, the mail outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from billing.models.base import Base, enum_type, public_id_column
from billing.models.enums import MailStatus, WebhookEventStatus


class WebhookEvent(Base):
    """A Stripe event as received; its unique id makes redelivery a no-op."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    stripe_event_id: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(128), index=True)
    livemode: Mapped[bool] = mapped_column(default=False)
    stripe_created_at: Mapped[datetime]
    received_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[WebhookEventStatus] = mapped_column(
        enum_type(WebhookEventStatus, "webhook_event_status"),
        default=WebhookEventStatus.RECEIVED,
        index=True,
    )
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    """When a worker may try a failed event again (exponential backoff)."""
    locked_until: Mapped[datetime | None]
    """The lease of the worker handling it; expired, another worker takes the event over."""
    locked_by: Mapped[str | None] = mapped_column(String(64))


class ApiClient(Base):
    """A content site (or app, newsletter) calling the API; its key is stored only as a hash."""

    __tablename__ = "api_clients"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = public_id_column("cli")
    name: Mapped[str] = mapped_column(String(200))
    key_prefix: Mapped[str] = mapped_column(String(32), unique=True)
    """The first characters of the key, shown in lists and used to find the row."""
    key_hash: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    allowed_origins: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime]
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("readers.id", ondelete="SET NULL"))
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AuditLog(Base):
    """Who did what to whom, and when: staff actions, seat changes, grants, exports."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("readers.id", ondelete="SET NULL"))
    actor_label: Mapped[str] = mapped_column(String(320))
    """Who acted, kept readable after the account is gone (``cli``, ``stripe``, an e-mail)."""
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str | None] = mapped_column(String(64))
    target_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ip: Mapped[str | None] = mapped_column(String(64))


class OutboxMessage(Base):
    """A mail of the transactional outbox: written in the transaction of the change that causes
    it, sent by the worker after commit, once (its unique ``key``). Shown at ``/dev/outbox``."""

    __tablename__ = "mail_outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    """What makes the mail unique: a second ``send`` with the same key writes nothing."""
    template: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(index=True)
    to: Mapped[str] = mapped_column(String(320), index=True)
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    status: Mapped[MailStatus] = mapped_column(
        enum_type(MailStatus, "mail_status"), default=MailStatus.PENDING, index=True
    )
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None]
    locked_until: Mapped[datetime | None]
    locked_by: Mapped[str | None] = mapped_column(String(64))
    sent_at: Mapped[datetime | None]


class EntitlementChange(Base):
    """A note that a reader's (or a group's) entitlement may have changed.

    Written in the same transaction as the change, by a session hook, so no write path can forget
    it. Every process polls this log to drop stale entries from its decision cache.
    """

    __tablename__ = "entitlement_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    reader_id: Mapped[int | None] = mapped_column(index=True)
    group_id: Mapped[int | None] = mapped_column(index=True)
    changed_at: Mapped[datetime] = mapped_column(index=True)
