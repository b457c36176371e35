"""the worker: leases and backoff on webhook events, a dead state, the transactional mail outbox

The development outbox (``dev_outbox``) becomes the outbox of every mail (``mail_outbox``): each
mail is a row written with the change that causes it, and the worker sends it after commit. The
rows already there were sent by the console backend: they are kept as sent.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import billing.models.base

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_EVENT_STATUSES = ("received", "processed", "failed", "ignored")
EVENT_STATUSES = (*OLD_EVENT_STATUSES, "dead")
MAIL_STATUSES = ("pending", "sent", "failed", "dead")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "next_attempt_at", billing.models.base.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column("locked_until", billing.models.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("locked_by", sa.String(length=64), nullable=True))
        batch_op.drop_constraint("webhook_event_status", type_="check")
        batch_op.create_check_constraint("webhook_event_status", _in("status", EVENT_STATUSES))

    with op.batch_alter_table("dev_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dev_outbox_to"))
        batch_op.drop_index(batch_op.f("ix_dev_outbox_sent_at"))
    op.rename_table("dev_outbox", "mail_outbox")
    with op.batch_alter_table("mail_outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("template", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("html", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "status",
                sa.Enum(
                    *MAIL_STATUSES,
                    name="mail_status",
                    native_enum=False,
                    create_constraint=True,
                    length=32,
                ),
                nullable=True,
            )
        )
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "next_attempt_at", billing.models.base.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column("locked_until", billing.models.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("locked_by", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE mail_outbox SET key = 'console-' || CAST(id AS VARCHAR(20)), template = '', "
        "created_at = sent_at, status = 'sent', attempts = 1"
    )
    with op.batch_alter_table("mail_outbox", schema=None) as batch_op:
        for column in ("key", "template", "created_at", "status", "attempts"):
            batch_op.alter_column(column, nullable=False)
        batch_op.alter_column("sent_at", nullable=True)
        batch_op.create_unique_constraint(batch_op.f("uq_mail_outbox_key"), ["key"])
        batch_op.create_index(batch_op.f("ix_mail_outbox_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_mail_outbox_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_mail_outbox_to"), ["to"], unique=False)


def downgrade() -> None:
    op.execute("DELETE FROM mail_outbox WHERE status <> 'sent'")
    with op.batch_alter_table("mail_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mail_outbox_to"))
        batch_op.drop_index(batch_op.f("ix_mail_outbox_status"))
        batch_op.drop_index(batch_op.f("ix_mail_outbox_created_at"))
        batch_op.drop_constraint(batch_op.f("uq_mail_outbox_key"), type_="unique")
        batch_op.alter_column("sent_at", nullable=False)
        batch_op.drop_constraint("mail_status", type_="check")
        for column in (
            "locked_by",
            "locked_until",
            "next_attempt_at",
            "last_error",
            "attempts",
            "status",
            "html",
            "created_at",
            "template",
            "key",
        ):
            batch_op.drop_column(column)
    op.rename_table("mail_outbox", "dev_outbox")
    with op.batch_alter_table("dev_outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dev_outbox_sent_at"), ["sent_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_dev_outbox_to"), ["to"], unique=False)

    op.execute("UPDATE webhook_events SET status = 'failed' WHERE status = 'dead'")
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_constraint("webhook_event_status", type_="check")
        batch_op.create_check_constraint("webhook_event_status", _in("status", OLD_EVENT_STATUSES))
        batch_op.drop_column("locked_by")
        batch_op.drop_column("locked_until")
        batch_op.drop_column("next_attempt_at")
