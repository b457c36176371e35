"""The one place group purchases ask how VAT applies to an organisation.

:func:`group_tax` asks the VAT rules (:func:`billing.services.taxes.business_treatment`): an
organisation with a valid VAT number of another member state is reverse-charged (0 %, with the
legal mention), any other is charged its country's rate (the publisher's own for a domestic
buyer, the buyer's under the OSS, none outside the EU). Group prices are net: the VAT is on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing.services import taxes
from billing.services.vat import exclusive_tax


@dataclass(frozen=True)
class GroupTax:
    """How VAT applies to an organisation's seats: ``rate`` percent on top of the net price."""

    rate: Decimal
    reverse_charge: bool
    note: str

    def tax_on(self, net: int) -> int:
        """The VAT on ``net`` minor units, rounded half up to the minor unit (0 under reverse
        charge)."""
        return 0 if self.reverse_charge else exclusive_tax(net, self.rate)


def group_tax(country: str, vat_id: str | None, now: datetime) -> GroupTax:
    """How VAT applies to an organisation in ``country`` with ``vat_id`` at ``now``.

    Raises :class:`billing.services.vat.InvalidVatIdError` (field ``vat_id``) for a malformed
    VAT number.
    """
    treatment = taxes.business_treatment(
        country, vat_id, now=now, settings=taxes.current_settings()
    )
    note = treatment.mention or f"VAT {treatment.rate.normalize():f} % ({treatment.country})"
    return GroupTax(treatment.rate, treatment.reverse_charge, note)
