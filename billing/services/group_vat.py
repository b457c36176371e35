"""An organisation's admin changes its VAT number and country, and with them the VAT of its next
invoices.

:func:`change_group_tax` applies the same rules as buying seats
(:func:`billing.services.taxes.business_treatment`: python-stdnum, then VIES when ``VIES_URL`` is
set): a valid VAT number of another member state is reverse-charged, anything else is taxed like a
consumer of the organisation's country. The change reaches Stripe at once (the customer's address,
``tax_exempt`` and EU VAT tax id) and the running subscription's Tax Rate changes for its next
invoice, so the invoices already issued keep their VAT.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.errors import ValidationFailed
from billing.gateway import StripeGateway
from billing.models import Customer, Group, Reader, Subscription
from billing.services import audit, taxes
from billing.services.groups import current_subscription, require_admin
from billing.services.payments import talking_to_stripe
from billing.services.vat import TaxKind, TaxTreatment


@dataclass(frozen=True, slots=True)
class GroupTaxNow:
    """How the organisation is taxed today, for its page: ``kind`` and ``rate`` (percent on top
    of the net price; 0 under reverse charge), and when the next invoice is issued (None when
    none is coming: no subscription, or one ending at its period's end)."""

    country: str
    vat_id: str | None
    kind: TaxKind
    rate: Decimal
    vies_valid: bool | None
    next_invoice_at: datetime | None


@dataclass(frozen=True, slots=True)
class GroupTaxChange:
    """What :func:`change_group_tax` did: the treatment before and after, and from when the new
    one applies (the running subscription's next invoice; None when no invoice is coming)."""

    before: GroupTaxNow
    after: TaxTreatment
    applies_from: datetime | None

    @property
    def changed(self) -> bool:
        """Whether the country or the VAT number is another one than before."""
        return (self.before.country, self.before.vat_id) != (self.after.country, self.after.vat_id)


def _customer_of(session: Session, group: Group) -> Customer | None:
    customer = session.scalar(select(Customer).where(Customer.group_id == group.id))
    return customer if customer is not None and customer.deleted_at is None else None


def _next_invoice_at(subscription: Subscription | None) -> datetime | None:
    if subscription is None or subscription.cancel_at_period_end:
        return None
    return subscription.current_period_end


def group_tax_now(
    session: Session, group: Group, *, now: datetime, settings: taxes.VatSettings
) -> GroupTaxNow:
    """How the organisation is taxed today, from the mirror alone (VIES is not asked)."""
    customer = _customer_of(session, group)
    if customer is not None:
        treatment = taxes.treatment_for(customer, now=now, settings=settings)
        vies_valid = customer.vies_valid
    else:
        offline = dataclasses.replace(settings, vies_url=None)
        treatment = taxes.business_treatment(group.country, group.vat_id, now=now, settings=offline)
        vies_valid = None
    return GroupTaxNow(
        country=group.country,
        vat_id=group.vat_id,
        kind=treatment.kind,
        rate=treatment.rate,
        vies_valid=vies_valid,
        next_invoice_at=_next_invoice_at(current_subscription(session, group, now)),
    )


def clean_country(value: str) -> str:
    """The upper-case ISO 3166-1 alpha-2 code, or :class:`ValidationFailed` naming ``country``."""
    code = (value or "").strip().upper()
    if not re.fullmatch(r"[A-Z]{2}", code):
        raise ValidationFailed("Choose the organisation's country.", field="country")
    return code


def change_group_tax(
    session: Session,
    gateway: StripeGateway,
    group: Group,
    admin: Reader,
    *,
    country: str,
    vat_id: str,
    now: datetime,
    settings: taxes.VatSettings,
) -> GroupTaxChange:
    """Make ``country`` and ``vat_id`` (empty: none) the organisation's, from its next invoice.

    Only an admin may (:func:`billing.services.groups.require_admin`). The VAT number is checked
    with python-stdnum as one issued by ``country`` (:class:`~billing.services.vat.InvalidVatIdError`
    naming ``vat_id`` otherwise) and, with ``VIES_URL`` set, with VIES; what VIES said is kept on
    the customer. Then the Stripe customer's address, ``tax_exempt``
    (:func:`~billing.services.taxes.tax_exempt_for`) and EU VAT tax id follow, and the running
    subscription gets the Tax Rate of the new treatment for its next invoice
    (:func:`~billing.services.taxes.apply_rate_change`; none under reverse charge). Audited as
    ``group.tax_changed``. The same country and number again change nothing.
    """
    require_admin(session, group, admin)
    code = clean_country(country)
    text = re.sub(r"[\s.-]", "", vat_id or "").upper()
    treatment = taxes.business_treatment(code, text or None, now=now, settings=settings)
    before = group_tax_now(session, group, now=now, settings=settings)
    subscription = current_subscription(session, group, now)
    applies_from = _next_invoice_at(subscription)
    change = GroupTaxChange(before, treatment, applies_from)
    if not change.changed:
        return change
    group.country = treatment.country
    group.vat_id = treatment.vat_id
    customer = _customer_of(session, group)
    if customer is not None:
        taxes.record_business_treatment(customer, treatment)
        with talking_to_stripe():
            # The tax id first: it is what Stripe may refuse, before anything else has changed.
            gateway.set_customer_vat_id(customer.stripe_id, treatment.vat_id)
            gateway.update_customer(
                customer.stripe_id,
                country=treatment.country,
                tax_exempt=taxes.tax_exempt_for(treatment),
            )
            if subscription is not None:
                taxes.apply_rate_change(
                    session, gateway, subscription.id, now=now, settings=settings, actor=admin
                )
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.tax_changed",
        target=group,
        details={
            "country_before": before.country,
            "country_after": treatment.country,
            "vat_id_before": before.vat_id,
            "vat_id_after": treatment.vat_id,
            "kind_before": str(before.kind),
            "kind_after": str(treatment.kind),
            "rate_before": str(before.rate),
            "rate_after": str(treatment.rate),
            "vies_valid": treatment.vies.valid if treatment.vies is not None else None,
            "applies_from": applies_from.isoformat() if applies_from else None,
        },
    )
    session.flush()
    return change
