"""invoices.tax may be negative: a credit invoice gives back the VAT inside it

A switch to a cheaper plan makes an invoice whose lines add up to less than zero; Stripe's
``total_taxes`` on it are negative (the VAT inside the credit), and mirroring it broke the
``tax >= 0`` check, so the switch failed with a 500 after Stripe had made it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _without_foreign_keys_on_sqlite() -> None:
    """SQLite alters the table by copying it and dropping the old one, which its foreign keys
    (refunds, disputes, ... point at invoices) refuse while rows refer to it. The pragma works
    only outside a transaction, as it is here (nothing written yet); the migration's connection
    is closed after it."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute("PRAGMA foreign_keys=OFF")
        # Left behind by a first version of this migration that failed halfway (SQLite's DDL
        # outside a transaction is not rolled back).
        op.execute("DROP TABLE IF EXISTS _alembic_tmp_invoices")


def upgrade() -> None:
    _without_foreign_keys_on_sqlite()
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_invoices_tax_not_negative"), type_="check")


def downgrade() -> None:
    _without_foreign_keys_on_sqlite()
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_check_constraint(
            batch_op.f("ck_invoices_tax_not_negative"), sa.text("tax >= 0")
        )
