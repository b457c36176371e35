"""The one place group purchases ask how VAT applies to an organisation.

Today no VAT rule is decided here: :func:`group_tax` answers :data:`UNDECIDED`, and the pages say
VAT is added on the invoice. At merge it calls the VAT service's
``tax_treatment(country, vat_id, on)`` (issue 10), and nothing else in the group code changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class GroupTax:
    """How VAT applies to an organisation's seats: ``rate_percent`` None while undecided."""

    rate_percent: float | None
    reverse_charge: bool
    note: str

    def tax_on(self, net: int) -> int | None:
        """The VAT on ``net`` minor units (None while undecided; 0 under reverse charge)."""
        if self.reverse_charge:
            return 0
        if self.rate_percent is None:
            return None
        return round(net * self.rate_percent / 100)


UNDECIDED = GroupTax(None, False, "VAT is added on the invoice where it applies.")


def group_tax(country: str, vat_id: str | None, on: date) -> GroupTax:
    """How VAT applies to an organisation in ``country`` with ``vat_id`` on the day ``on``."""
    return UNDECIDED
