"""invoices.tax_evidence is jsonb on PostgreSQL

The invoices report writes each invoice's country evidence as text from four of its members; on a
``json`` column PostgreSQL parses the whole document again for every member read, which made the
CSV export of a million invoices 1.8x PostgreSQL's own COPY of the same rows. ``jsonb`` is parsed
once, when written. SQLite keeps its JSON text.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.alter_column(
        "invoices",
        "tax_evidence",
        type_=postgresql.JSONB(),
        existing_type=sa.JSON(),
        postgresql_using="tax_evidence::jsonb",
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.alter_column(
        "invoices",
        "tax_evidence",
        type_=sa.JSON(),
        existing_type=postgresql.JSONB(),
        postgresql_using="tax_evidence::json",
    )
