"""scheduled subscriptions and the entitlement change log

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 02:23:29.472639
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import billing.models.base

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "entitlement_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("changed_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entitlement_changes")),
    )
    with op.batch_alter_table("entitlement_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_entitlement_changes_changed_at"), ["changed_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_entitlement_changes_group_id"), ["group_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_entitlement_changes_reader_id"), ["reader_id"], unique=False
        )

    op.create_table(
        "scheduled_subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=True),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column("starts_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("subscription_id", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_scheduled_subscriptions_customer_id_customers"),
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_scheduled_subscriptions_plan_id_plans")
        ),
        sa.ForeignKeyConstraint(
            ["reader_id"],
            ["readers.id"],
            name=op.f("fk_scheduled_subscriptions_reader_id_readers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_scheduled_subscriptions_subscription_id_subscriptions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduled_subscriptions")),
        sa.UniqueConstraint("reader_id", name=op.f("uq_scheduled_subscriptions_reader_id")),
    )
    with op.batch_alter_table("scheduled_subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_scheduled_subscriptions_starts_at"), ["starts_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("scheduled_subscriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scheduled_subscriptions_starts_at"))

    op.drop_table("scheduled_subscriptions")
    with op.batch_alter_table("entitlement_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_entitlement_changes_reader_id"))
        batch_op.drop_index(batch_op.f("ix_entitlement_changes_group_id"))
        batch_op.drop_index(batch_op.f("ix_entitlement_changes_changed_at"))

    op.drop_table("entitlement_changes")
