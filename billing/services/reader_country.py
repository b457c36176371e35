"""A reader who moved changes the country they live in, and with it the VAT of their next invoices.

:func:`change_country` follows the evidence model of :mod:`billing.services.taxes`: the country
the reader declares and their card's issuing country are the two pieces of evidence; when they
disagree, the reader must confirm where they live (:class:`~billing.services.taxes.CountryUnconfirmed`
until they do), and the confirmation is recorded. The new country is taxed from the running
subscription's next invoice (its Stripe ``default_tax_rates`` change now, so the invoices already
issued keep their VAT), and from the first invoice of a subscription still to start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from billing.errors import ValidationFailed
from billing.gateway import StripeGateway
from billing.models import Customer, Reader, Subscription
from billing.services import audit, payments, stripe_mirror, taxes
from billing.services.vat import CountryEvidence, TaxKind, TaxTreatment, tax_treatment, utc_day


@dataclass(frozen=True, slots=True)
class CountryChange:
    """What changing the reader's country did, for the page to say it.

    ``rate_before``/``rate_after`` are the VAT percentages included in the reader's price in
    the old and the new country (``kind_after`` says which rule: domestic, OSS, outside the EU).
    ``applies_from`` is when the new rate first applies: the running subscription's next invoice,
    or the start of a subscription scheduled after the trial; None when no invoice is coming
    (no subscription, or one cancelled at its period's end).
    """

    before: str
    after: str
    evidence: CountryEvidence | None
    rate_before: Decimal | None
    rate_after: Decimal
    kind_after: TaxKind
    applies_from: datetime | None

    @property
    def changed(self) -> bool:
        """Whether the country is another one than before."""
        return self.before != self.after


def clean_country(value: str) -> str:
    """The upper-case ISO 3166-1 alpha-2 code, or :class:`ValidationFailed` naming ``country``."""
    country = (value or "").strip().upper()
    if len(country) != 2 or not country.isascii() or not country.isalpha():
        raise ValidationFailed("Choose the country you live in from the list.", field="country")
    return country


def consumer_treatment(country: str, *, now: datetime, settings: taxes.VatSettings) -> TaxTreatment:
    """How a reader (a consumer, without a VAT number) living in ``country`` is taxed at ``now``."""
    return tax_treatment(
        country,
        None,
        utc_day(now),
        publisher_country=settings.publisher_country,
        outside_eu_rate=settings.outside_eu_rate,
        table=settings.table,
    )


@dataclass(frozen=True, slots=True)
class CountryNow:
    """The reader's country as the change page shows it: the VAT their price includes there, and
    when their next invoice is issued (None when none is coming)."""

    country: str
    rate: Decimal
    kind: TaxKind
    next_invoice_at: datetime | None
    card_country: str | None


def _live_customer(session: Session, reader: Reader) -> Customer | None:
    customer = stripe_mirror.customer_of(session, reader)
    return customer if customer is not None and customer.deleted_at is None else None


def lives_in(session: Session, reader: Reader) -> str:
    """The country the reader lives in for VAT: their customer's taxed country, else the one
    they gave at sign-up."""
    customer = _live_customer(session, reader)
    return (customer.country if customer is not None else None) or reader.country


def country_now(
    session: Session, reader: Reader, *, now: datetime, settings: taxes.VatSettings
) -> CountryNow:
    """Where the reader lives for VAT today, from the mirror alone."""
    customer = _live_customer(session, reader)
    country = lives_in(session, reader)
    treatment = consumer_treatment(country, now=now, settings=settings)
    overview = payments.overview(session, reader, now=now)
    running = overview.subscription
    if running is not None and running.has_ended(now):
        running = None
    return CountryNow(
        country,
        treatment.rate,
        treatment.kind,
        _next_invoice_at(overview, running),
        customer.card_country if customer is not None else None,
    )


def change_country(
    session: Session,
    gateway: StripeGateway,
    reader: Reader,
    country: str,
    *,
    confirmed: bool,
    now: datetime,
    settings: taxes.VatSettings,
) -> CountryChange:
    """Make ``country`` the one the reader lives in, from now on.

    Without a customer on Stripe only the account's country changes (a later subscription is
    taxed by it). With one, the new country is recorded as the declared evidence against the
    saved card's (:func:`~billing.services.taxes.record_country_evidence`: refused with
    :class:`~billing.services.taxes.CountryUnconfirmed` while they disagree and the reader has not
    ``confirmed``), the Stripe customer's address follows, and the running subscription gets the
    new country's Tax Rate for its next invoice. Audited as ``account.country_changed``. Changing
    to the country the reader already lives in changes nothing.
    """
    new = clean_country(country)
    customer = _live_customer(session, reader)
    before = lives_in(session, reader)
    rate_before = consumer_treatment(before, now=now, settings=settings).rate
    overview = payments.overview(session, reader, now=now)
    running = overview.subscription
    if running is not None and running.has_ended(now):
        running = None
    applies_from = _next_invoice_at(overview, running)
    if before == new and reader.country == new:
        after = consumer_treatment(new, now=now, settings=settings)
        return CountryChange(before, new, None, rate_before, after.rate, after.kind, applies_from)
    evidence = None
    if customer is not None:
        evidence = taxes.record_country_evidence(
            session, gateway, customer, new, confirmed=confirmed, now=now, settings=settings
        )
        after = taxes.treatment_for(customer, now=now, settings=settings)
    else:
        after = consumer_treatment(new, now=now, settings=settings)
    reader.country = new
    if running is not None:
        taxes.apply_rate_change(
            session, gateway, running.id, now=now, settings=settings, actor=reader
        )
    audit.record(
        session,
        now=now,
        actor=reader,
        action="account.country_changed",
        target=reader,
        details={
            "before": before,
            "after": new,
            "evidence": evidence.as_dict(confirmed=not evidence.agrees) if evidence else None,
            "rate_before": str(rate_before),
            "rate_after": str(after.rate),
            "applies_from": applies_from.isoformat() if applies_from else None,
        },
    )
    session.flush()
    return CountryChange(before, new, evidence, rate_before, after.rate, after.kind, applies_from)


def _next_invoice_at(
    overview: payments.BillingOverview, running: Subscription | None
) -> datetime | None:
    """When the reader's next invoice is issued: the running subscription's period end (unless
    it is cancelled at that end), or the start of a subscription scheduled after the trial."""
    if running is not None:
        return None if running.cancel_at_period_end else running.current_period_end
    if overview.scheduled is not None:
        return overview.scheduled.starts_at
    return None
