"""VAT: the Tax Rates kept on Stripe, country evidence on customers, VAT columns on invoices and refunds

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 15:52:52.920164
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import billing.models.base

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tax_rates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stripe_id", sa.String(length=255), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("percentage", sa.Numeric(precision=7, scale=4), nullable=False),
        sa.Column("inclusive", sa.Boolean(), nullable=False),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "percentage >= 0 AND percentage <= 100", name=op.f("ck_tax_rates_percentage_range")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tax_rates")),
        sa.UniqueConstraint(
            "country",
            "percentage",
            "inclusive",
            name=op.f("uq_tax_rates_country_percentage_inclusive"),
        ),
        sa.UniqueConstraint("stripe_id", name=op.f("uq_tax_rates_stripe_id")),
    )
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("declared_country", sa.String(length=2), nullable=True))
        batch_op.add_column(sa.Column("card_country", sa.String(length=2), nullable=True))
        batch_op.add_column(
            sa.Column(
                "country_confirmed_at",
                billing.models.base.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
        batch_op.add_column(sa.Column("vies_valid", sa.Boolean(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "vies_checked_at", billing.models.base.UTCDateTime(timezone=True), nullable=True
            )
        )

    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("net", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("tax_rate", sa.Numeric(precision=7, scale=4), nullable=True))
        batch_op.add_column(sa.Column("tax_country", sa.String(length=2), nullable=True))
        batch_op.add_column(sa.Column("tax_kind", sa.String(length=16), nullable=True))
        batch_op.add_column(
            sa.Column("reverse_charge", sa.Boolean(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("tax_evidence", sa.JSON(), nullable=True))

    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tax", sa.Integer(), server_default="0", nullable=False))

    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tax_rate_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_subscriptions_tax_rate_id_tax_rates"),
            "tax_rates",
            ["tax_rate_id"],
            ["id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_subscriptions_tax_rate_id_tax_rates"), type_="foreignkey"
        )
        batch_op.drop_column("tax_rate_id")

    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_column("tax")

    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_column("tax_evidence")
        batch_op.drop_column("reverse_charge")
        batch_op.drop_column("tax_kind")
        batch_op.drop_column("tax_country")
        batch_op.drop_column("tax_rate")
        batch_op.drop_column("net")

    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_column("vies_checked_at")
        batch_op.drop_column("vies_valid")
        batch_op.drop_column("country_confirmed_at")
        batch_op.drop_column("card_country")
        batch_op.drop_column("declared_country")

    op.drop_table("tax_rates")
