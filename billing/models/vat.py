"""The VAT Tax Rates Tollgate keeps on Stripe, one per country and percentage."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Boolean, CheckConstraint, Numeric, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from billing.models.base import Base


class TaxRate(Base):
    """An inclusive Stripe Tax Rate of ``percentage`` for ``country``; never edited, so a rate
    change is a new row (and a new Tax Rate on Stripe)."""

    __tablename__ = "tax_rates"

    id: Mapped[int] = mapped_column(primary_key=True)
    stripe_id: Mapped[str] = mapped_column(String(255), unique=True)
    country: Mapped[str] = mapped_column(String(2))
    percentage: Mapped[Decimal] = mapped_column(Numeric(7, 4))
    inclusive: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("country", "percentage", "inclusive"),
        CheckConstraint("percentage >= 0 AND percentage <= 100", name="percentage_range"),
    )
