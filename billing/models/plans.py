"""Plans: what can be bought, mirrored from Stripe Products and Prices."""

from __future__ import annotations

from sqlalchemy import Boolean, CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from billing.models.base import Base, Currency, enum_type
from billing.models.enums import BillingInterval, PlanKind


class Plan(Base):
    """A price of a product: individual monthly or yearly, group per-seat yearly."""

    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[PlanKind] = mapped_column(enum_type(PlanKind, "plan_kind"))
    interval: Mapped[BillingInterval] = mapped_column(enum_type(BillingInterval, "plan_interval"))
    amount: Mapped[int]
    """Price per interval (per seat for group plans) in minor units, VAT included."""
    currency: Mapped[str] = mapped_column(Currency)
    stripe_product_id: Mapped[str | None] = mapped_column(String(255))
    stripe_price_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    __table_args__ = (CheckConstraint("amount >= 0", name="amount_not_negative"),)

    def monthly_amount(self, quantity: int = 1) -> int:
        """This plan's contribution to MRR in minor units for ``quantity`` seats (yearly / 12)."""
        total = self.amount * quantity
        return total if self.interval == BillingInterval.MONTH else round(total / 12)
