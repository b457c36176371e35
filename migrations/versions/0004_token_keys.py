"""token keys: each API client's own keys for signing access tokens

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 16:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import billing.models.base

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "token_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kid", sa.String(length=32), nullable=False),
        sa.Column("api_client_id", sa.Integer(), nullable=False),
        sa.Column("wrapped_secret", sa.String(length=255), nullable=False),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("signs_from", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("retires_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["api_client_id"],
            ["api_clients.id"],
            name=op.f("fk_token_keys_api_client_id_api_clients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_keys")),
        sa.UniqueConstraint("kid", name=op.f("uq_token_keys_kid")),
    )
    with op.batch_alter_table("token_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_token_keys_api_client_id"), ["api_client_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("token_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_token_keys_api_client_id"))
    op.drop_table("token_keys")
