"""group seats, hashed invites, approved domains and overlap-proof office networks

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import billing.models.base

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = billing.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("admins_take_seat", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(sa.Column("seats_full_mailed_at", UTC, nullable=True))
        batch_op.add_column(
            sa.Column("auto_reclaim_idle", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.alter_column("admins_take_seat", server_default=None)
        batch_op.alter_column("auto_reclaim_idle", server_default=None)

    with op.batch_alter_table("group_memberships", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_read_at", UTC, nullable=True))
        batch_op.add_column(sa.Column("idle_warned_at", UTC, nullable=True))

    with op.batch_alter_table("group_invites", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("sent_at", UTC, nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_group_invites_token_hash"), ["token_hash"])

    with op.batch_alter_table("group_domains", schema=None) as batch_op:
        batch_op.add_column(sa.Column("approved_at", UTC, nullable=True))
        batch_op.add_column(sa.Column("approved_by_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_group_domains_approved_by_id_readers"),
            "readers",
            ["approved_by_id"],
            ["id"],
            ondelete="SET NULL",
        )

    with op.batch_alter_table("group_ip_ranges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="4"))
        batch_op.add_column(
            sa.Column("first_address", sa.String(length=32), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("last_address", sa.String(length=32), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("approved_at", UTC, nullable=True))
        batch_op.add_column(sa.Column("approved_by_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("private_allowed", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_group_ip_ranges_approved_by_id_readers"),
            "readers",
            ["approved_by_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_check_constraint("version_known", "version IN (4, 6)")
        batch_op.create_check_constraint("bounds_ordered", "first_address <= last_address")
        batch_op.create_index(
            "ix_group_ip_ranges_bounds", ["version", "first_address", "last_address"]
        )
    with op.batch_alter_table("group_ip_ranges", schema=None) as batch_op:
        batch_op.alter_column("version", server_default=None)
        batch_op.alter_column("first_address", server_default=None)
        batch_op.alter_column("last_address", server_default=None)
        batch_op.alter_column("private_allowed", server_default=None)

    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE group_ip_ranges ADD CONSTRAINT ex_group_ip_ranges_no_overlap "
            "EXCLUDE USING gist ((cidr::cidr) inet_ops WITH &&)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE group_ip_ranges DROP CONSTRAINT ex_group_ip_ranges_no_overlap")
    with op.batch_alter_table("group_ip_ranges", schema=None) as batch_op:
        batch_op.drop_index("ix_group_ip_ranges_bounds")
        batch_op.drop_constraint("bounds_ordered", type_="check")
        batch_op.drop_constraint("version_known", type_="check")
        batch_op.drop_constraint(
            batch_op.f("fk_group_ip_ranges_approved_by_id_readers"), type_="foreignkey"
        )
        batch_op.drop_column("private_allowed")
        batch_op.drop_column("approved_by_id")
        batch_op.drop_column("approved_at")
        batch_op.drop_column("last_address")
        batch_op.drop_column("first_address")
        batch_op.drop_column("version")

    with op.batch_alter_table("group_domains", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_group_domains_approved_by_id_readers"), type_="foreignkey"
        )
        batch_op.drop_column("approved_by_id")
        batch_op.drop_column("approved_at")

    with op.batch_alter_table("group_invites", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_group_invites_token_hash"), type_="unique")
        batch_op.drop_column("sent_at")
        batch_op.drop_column("token_hash")

    with op.batch_alter_table("group_memberships", schema=None) as batch_op:
        batch_op.drop_column("idle_warned_at")
        batch_op.drop_column("last_read_at")

    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.drop_column("auto_reclaim_idle")
        batch_op.drop_column("seats_full_mailed_at")
        batch_op.drop_column("admins_take_seat")
