"""anonymous IP sessions per group per day, and the visitors already counted

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 13:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "group_ip_sessions",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "sessions >= 0", name=op.f("ck_group_ip_sessions_sessions_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_group_ip_sessions_group_id_groups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_id", "day", name=op.f("pk_group_ip_sessions")),
    )
    op.create_table(
        "group_ip_visitors",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("visitor", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_group_ip_visitors_group_id_groups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_id", "day", "visitor", name=op.f("pk_group_ip_visitors")),
    )
    op.create_index(op.f("ix_group_ip_visitors_day"), "group_ip_visitors", ["day"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_group_ip_visitors_day"), table_name="group_ip_visitors")
    op.drop_table("group_ip_visitors")
    op.drop_table("group_ip_sessions")
