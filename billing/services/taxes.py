"""VAT on Stripe and in the mirror: the Tax Rates we keep, the rate of each subscription, the
country evidence, and what every invoice and refund records.

The rules of who pays what are in :mod:`billing.services.vat`; this module applies them:

- :func:`ensure_tax_rate` finds or creates the inclusive Tax Rate of a country and percentage, on
  Stripe and in ``tax_rates`` (like ``sync-plans`` for prices: never edited, a new rate is a new
  Tax Rate);
- :func:`tax_rates_for` says which Tax Rates a customer's subscription carries today;
- :func:`record_country_evidence` keeps the declared and card country on the customer and refuses
  to go on, with :class:`CountryUnconfirmed`, while they disagree and the reader has not confirmed;
- :func:`apply_rate_changes` is the ``tick`` step that moves each running subscription to the
  rate of its customer's country as of today (a rate change on its date, a reader who moved): the
  new Tax Rate applies from the subscription's next invoice, as Stripe's ``default_tax_rates`` do;
- :func:`invoice_tax_values` and :func:`refund_taxes` are what the mirror stores.

Settings (``PUBLISHER_COUNTRY``, ``VAT_OUTSIDE_EU_RATE``, ``VIES_URL``, ``VIES_TIMEOUT``) come
from the app's config, read with :func:`settings_from`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.errors import DomainError, ValidationFailed
from billing.gateway import (
    StripeGateway,
    StripeInvoiceData,
    StripeRefundData,
    TaxExempt,
    is_ours,
)
from billing.models import Customer, Invoice, Reader, Refund, Subscription, TaxRate
from billing.models.payments import ENDED_STATUSES
from billing.services import audit
from billing.services.vat import (
    EU_MEMBER_STATES,
    CountryEvidence,
    RateTable,
    TaxKind,
    TaxTreatment,
    ViesResult,
    check_vies,
    inclusive_tax,
    plain_rate,
    rate_table,
    tax_treatment,
    utc_day,
)

log = logging.getLogger(__name__)


class CountryUnconfirmed(DomainError):
    """The country the reader gave and their card's country disagree; they must confirm theirs."""

    status = 409
    code = "country_unconfirmed"

    def __init__(self, evidence: CountryEvidence) -> None:
        super().__init__(
            f"Your card was issued in {evidence.card}, but you told us you live in "
            f"{evidence.declared}. VAT is charged where you live: please confirm your country.",
            field="country",
        )
        self.evidence = evidence


@dataclass(frozen=True, slots=True)
class VatSettings:
    """The publisher's VAT settings."""

    publisher_country: str
    publisher_vat_id: str | None = None
    outside_eu_rate: Decimal = Decimal(0)
    vies_url: str | None = None
    vies_timeout: float = 5.0
    table: RateTable | None = None
    """The rate table to use; the repository's (:func:`billing.services.vat.rate_table`) if None."""


def settings_from(config: Mapping[str, Any]) -> VatSettings:
    """The VAT settings of an app config (``PUBLISHER_COUNTRY`` defaults to ``BE``)."""
    return VatSettings(
        publisher_country=str(config.get("PUBLISHER_COUNTRY") or "BE").upper(),
        publisher_vat_id=str(config.get("PUBLISHER_VAT_ID") or "") or None,
        outside_eu_rate=Decimal(str(config.get("VAT_OUTSIDE_EU_RATE") or "0")),
        vies_url=str(config.get("VIES_URL") or "") or None,
        vies_timeout=float(config.get("VIES_TIMEOUT") or 5.0),
    )


def current_settings() -> VatSettings:
    """The VAT settings of the running app."""
    from flask import current_app

    return settings_from(current_app.config)


# --- who is taxed how ----------------------------------------------------------------------------


def treatment_for(customer: Customer, *, now: datetime, settings: VatSettings) -> TaxTreatment:
    """How a customer's sales are taxed today, from its country and VAT id (a VAT id VIES said is
    not registered is taxed like a consumer)."""
    vies = None
    if customer.vat_id and customer.vies_valid is not None and customer.vies_checked_at:
        vies = ViesResult(customer.vat_id, customer.vies_valid, customer.vies_checked_at)
    country = customer.country or settings.publisher_country
    return _treatment(country, customer.vat_id, now, settings, vies)


def business_treatment(
    country: str, vat_id: str | None, *, now: datetime, settings: VatSettings
) -> TaxTreatment:
    """How an organisation in ``country`` with ``vat_id`` is taxed today, VIES asked when
    ``VIES_URL`` is set (for the groups area: keep it with :func:`record_business_treatment`).

    Raises :class:`billing.services.vat.InvalidVatIdError` (field ``vat_id``) for a malformed id.
    """
    first = _treatment(country, vat_id, now, settings, None)
    if first.vat_id is None or settings.vies_url is None or first.kind == TaxKind.OUTSIDE_EU:
        return first
    vies = check_vies(first.vat_id, url=settings.vies_url, timeout=settings.vies_timeout, now=now)
    return _treatment(country, first.vat_id, now, settings, vies)


def _treatment(
    country: str,
    vat_id: str | None,
    now: datetime,
    settings: VatSettings,
    vies: ViesResult | None,
) -> TaxTreatment:
    return tax_treatment(
        country,
        vat_id,
        utc_day(now),
        publisher_country=settings.publisher_country,
        outside_eu_rate=settings.outside_eu_rate,
        vies=vies,
        table=settings.table,
    )


def record_business_treatment(customer: Customer, treatment: TaxTreatment) -> None:
    """Keep on an organisation's customer what :func:`business_treatment` found: its country,
    its VAT id and what VIES said of it, with the date (None when VIES was not asked or did not
    answer)."""
    customer.country = treatment.country
    customer.vat_id = treatment.vat_id
    customer.vies_valid = treatment.vies.valid if treatment.vies is not None else None
    customer.vies_checked_at = treatment.vies.checked_at if treatment.vies is not None else None


def tax_exempt_for(treatment: TaxTreatment) -> TaxExempt:
    """The Stripe customer's ``tax_exempt`` for ``treatment``: ``reverse`` for a reverse-charged
    organisation (Stripe prints "Reverse charge" on its documents), ``none`` for everyone else."""
    return "reverse" if treatment.kind == TaxKind.REVERSE_CHARGE else "none"


# --- Tax Rates on Stripe -------------------------------------------------------------------------


def ensure_tax_rate(
    session: Session,
    gateway: StripeGateway,
    country: str,
    percentage: Decimal,
    *,
    now: datetime,
    inclusive: bool = True,
) -> TaxRate:
    """The Tax Rate of ``country`` at ``percentage``, inclusive (readers' prices) or not
    (organisations' net prices): from ``tax_rates``, else one of ours already on Stripe, else a
    new one (its creation idempotent per country, percentage and kind, so two subscriptions
    starting at once in a new country store the same one)."""
    country = country.upper()
    percentage = plain_rate(Decimal(percentage))
    rows = session.scalars(
        select(TaxRate).where(TaxRate.country == country, TaxRate.inclusive.is_(inclusive))
    ).all()
    for row in rows:
        if Decimal(row.percentage) == percentage:
            return row
    found = next(
        (
            rate
            for rate in gateway.list_tax_rates()
            if is_ours(rate)
            and rate.inclusive == inclusive
            and rate.active
            and rate.country == country
            and rate.percentage == percentage
        ),
        None,
    )
    if found is None:
        found = gateway.create_tax_rate(
            percentage,
            country,
            inclusive=inclusive,
            idempotency_key=f"tollgate-tax-rate-{country}-{percentage}"
            + ("" if inclusive else "-exclusive"),
        )
    row = TaxRate(
        stripe_id=found.id,
        country=country,
        percentage=percentage,
        inclusive=inclusive,
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        # Another transaction stored the same Tax Rate (Stripe gave both the same one) first.
        stored = select(TaxRate).where(
            TaxRate.country == country,
            TaxRate.inclusive.is_(inclusive),
            TaxRate.percentage == percentage,
        )
        return session.scalars(stored).one()
    return row


def sync_tax_rates(
    session: Session, gateway: StripeGateway, *, now: datetime, settings: VatSettings
) -> list[TaxRate]:
    """Ensure the Tax Rate every member state's consumers are taxed at today exists on Stripe and
    in ``tax_rates`` (idempotent; rates of past days are kept, never edited)."""
    table = settings.table or rate_table()
    day = utc_day(now)
    return [
        ensure_tax_rate(session, gateway, country, table.rate_on(country, day), now=now)
        for country in sorted(EU_MEMBER_STATES)
    ]


def tax_rates_for(
    session: Session,
    gateway: StripeGateway,
    customer: Customer,
    *,
    now: datetime,
    settings: VatSettings,
) -> TaxRate | None:
    """The Tax Rate a subscription of ``customer`` carries today; None for reverse charge and
    outside the EU at 0 % (no VAT on the invoice at all). A reader's prices include VAT; an
    organisation's (a group's customer) are net, so its Tax Rate is added on top."""
    treatment = treatment_for(customer, now=now, settings=settings)
    if treatment.kind == TaxKind.REVERSE_CHARGE:
        return None
    if treatment.kind == TaxKind.OUTSIDE_EU and treatment.rate == 0:
        return None
    return ensure_tax_rate(
        session,
        gateway,
        treatment.country,
        treatment.rate,
        now=now,
        inclusive=customer.group_id is None,
    )


def stored_tax_rate_id(session: Session, stripe_ids: Sequence[str]) -> int | None:
    """The ``tax_rates`` row of the first of a subscription's Tax Rates (None when it has none, or
    one we do not know: ``tick`` then sets the right one)."""
    if not stripe_ids:
        return None
    return session.scalar(select(TaxRate.id).where(TaxRate.stripe_id == stripe_ids[0]))


def tax_rate_ids(rate: TaxRate | None) -> tuple[str, ...]:
    """The ``default_tax_rates`` for a subscription carrying ``rate``."""
    return () if rate is None else (rate.stripe_id,)


# --- the reader's country ------------------------------------------------------------------------


def record_country_evidence(
    session: Session,
    gateway: StripeGateway,
    customer: Customer,
    declared: str,
    *,
    confirmed: bool,
    now: datetime,
    settings: VatSettings | None = None,
) -> CountryEvidence:
    """Keep the reader's declared country and their card's country on ``customer``; the declared
    one becomes the taxed ``country`` (also on Stripe, with the customer's ``tax_exempt`` for
    its treatment in that country: :func:`tax_exempt_for`).

    When the two disagree and the reader has not ``confirmed``, nothing changes and
    :class:`CountryUnconfirmed` is raised; a confirmation is recorded with its time and audited.
    """
    evidence = CountryEvidence(declared=declared.strip().upper(), card=customer.card_country)
    if not evidence.agrees and not confirmed:
        raise CountryUnconfirmed(evidence)
    changed = customer.country != evidence.declared
    customer.declared_country = evidence.declared
    customer.country = evidence.declared
    customer.country_confirmed_at = None if evidence.agrees else now
    if changed:
        treatment = treatment_for(customer, now=now, settings=settings or current_settings())
        gateway.update_customer(
            customer.stripe_id, country=evidence.declared, tax_exempt=tax_exempt_for(treatment)
        )
    if not evidence.agrees:
        audit.record(
            session,
            now=now,
            actor=customer.reader or "system",
            action="vat.country_confirmed",
            target=customer,
            details=evidence.as_dict(confirmed=True),
        )
    session.flush()
    return evidence


def declare_country(
    session: Session,
    gateway: StripeGateway,
    reader: Reader,
    declared: str,
    *,
    confirmed: bool,
    now: datetime,
) -> CountryEvidence:
    """The reader's country as they gave it on the subscribe form, against their saved card's
    (:func:`record_country_evidence`); needs the customer a saved card created."""
    customer = session.scalar(select(Customer).where(Customer.reader_id == reader.id))
    if customer is None:
        raise ValidationFailed("Add a card first.", field="card")
    return record_country_evidence(
        session, gateway, customer, declared, confirmed=confirmed, now=now
    )


def evidence_of(customer: Customer) -> dict[str, Any]:
    """The evidence as an invoice records it."""
    declared = customer.declared_country or customer.country or ""
    evidence = CountryEvidence(declared=declared, card=customer.card_country)
    return evidence.as_dict(confirmed=customer.country_confirmed_at is not None)


# --- the tick step -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateChange:
    """A subscription moved to another Tax Rate (from its next invoice)."""

    subscription_id: int
    before: Decimal | None
    after: Decimal | None
    country: str | None


def running_subscription_ids(session: Session, *, now: datetime) -> list[int]:
    """The subscriptions that have not ended: those whose next invoices :func:`apply_rate_change`
    keeps at the right rate."""
    rows = session.scalars(
        select(Subscription)
        .where(Subscription.status.not_in(ENDED_STATUSES))
        .order_by(Subscription.id)
    ).all()
    return [row.id for row in rows if not row.has_ended(now)]


def apply_rate_change(
    session: Session,
    gateway: StripeGateway,
    subscription_id: int,
    *,
    now: datetime,
    settings: VatSettings,
    actor: Reader | str = "cli",
) -> RateChange | None:
    """Set on the subscription the Tax Rate its customer's country has today, when it carries
    another one (a rate change from its effective date, or a reader who moved country); None
    when it already carries the right one. Audited with ``actor`` (the ``tick`` command, or the
    reader who changed their country).

    Stripe applies ``default_tax_rates`` to the invoices created after the change, so the new rate
    applies from the subscription's next period; invoices already issued keep theirs.
    """
    subscription = session.get_one(Subscription, subscription_id, with_for_update=True)
    wanted = tax_rates_for(session, gateway, subscription.customer, now=now, settings=settings)
    wanted_id = wanted.id if wanted is not None else None
    if wanted_id == subscription.tax_rate_id:
        return None
    current = session.get(TaxRate, subscription.tax_rate_id) if subscription.tax_rate_id else None
    gateway.set_subscription_tax_rates(subscription.stripe_id, tax_rate_ids(wanted))
    subscription.tax_rate_id = wanted_id
    change = RateChange(
        subscription.id,
        plain_rate(Decimal(current.percentage)) if current else None,
        plain_rate(Decimal(wanted.percentage)) if wanted else None,
        wanted.country if wanted else subscription.customer.country,
    )
    audit.record(
        session,
        now=now,
        actor=actor,
        action="vat.rate_changed",
        target=subscription,
        details={
            "before": str(change.before) if change.before is not None else None,
            "after": str(change.after) if change.after is not None else None,
            "country": change.country,
        },
    )
    session.flush()
    return change


def apply_rate_changes(
    session: Session, gateway: StripeGateway, *, now: datetime, settings: VatSettings
) -> list[RateChange]:
    """:func:`apply_rate_change` for every running subscription, in one transaction."""
    changes = (
        apply_rate_change(session, gateway, subscription_id, now=now, settings=settings)
        for subscription_id in running_subscription_ids(session, now=now)
    )
    return [change for change in changes if change is not None]


# --- what the mirror records ---------------------------------------------------------------------


def invoice_tax_values(
    session: Session,
    data: StripeInvoiceData,
    customer: Customer,
    existing: Invoice | None,
    *,
    publisher_country: str,
) -> dict[str, Any]:
    """The VAT columns of a mirrored invoice: net, rate, country, kind, reverse charge, and the
    country evidence (kept as first recorded: it is the evidence at the time of the sale)."""
    rate = None
    if data.tax_rate_ids:
        rate = session.scalar(select(TaxRate).where(TaxRate.stripe_id == data.tax_rate_ids[0]))
    values: dict[str, Any] = {"net": data.total - data.tax}
    country = customer.country
    if rate is not None:
        country = rate.country
        if country not in EU_MEMBER_STATES:
            kind: TaxKind | None = TaxKind.OUTSIDE_EU
        elif country == publisher_country:
            kind = TaxKind.DOMESTIC
        else:
            kind = TaxKind.OSS
        values.update(tax_rate=plain_rate(Decimal(rate.percentage)), tax_country=country)
    elif country and country not in EU_MEMBER_STATES:
        kind = TaxKind.OUTSIDE_EU
        values.update(tax_rate=Decimal(0), tax_country=country)
    elif country and customer.vat_id and country != publisher_country and data.tax == 0:
        kind = TaxKind.REVERSE_CHARGE
        values.update(tax_rate=Decimal(0), tax_country=country)
    else:
        kind = None
    values["tax_kind"] = str(kind) if kind is not None else None
    values["reverse_charge"] = kind == TaxKind.REVERSE_CHARGE
    if existing is None or existing.tax_evidence is None:
        values["tax_evidence"] = evidence_of(customer)
    return values


def refund_taxes(
    session: Session, invoice: Invoice | None, refunds: Sequence[StripeRefundData]
) -> dict[str, int]:
    """The VAT given back by each refund of ``invoice``'s payment, at the invoice's rate.

    A refund already mirrored keeps the VAT it was recorded with (a filed VAT return never
    changes). Each new one, oldest first, gives back the VAT inside its amount but never more than
    is left, and the refund that completes the invoice's total gives back all that is left: the
    VAT refunded never exceeds, and for a full refund equals, the VAT charged. Failed and
    cancelled refunds give back nothing.
    """
    result = {refund.id: 0 for refund in refunds}
    if invoice is None or invoice.tax_rate is None or invoice.tax == 0:
        return result
    rows = session.execute(
        select(Refund.stripe_id, Refund.tax).where(
            Refund.stripe_id.in_([refund.id for refund in refunds])
        )
    )
    recorded: dict[str, int] = {stripe_id: tax for stripe_id, tax in rows}
    live = [refund for refund in refunds if refund.status not in {"failed", "canceled"}]
    given = sum(recorded.get(refund.id, 0) for refund in live)
    refunded = sum(refund.amount for refund in live if refund.id in recorded)
    rate = Decimal(invoice.tax_rate)
    for refund in sorted(live, key=lambda r: (r.created, r.id)):
        if refund.id in recorded:
            result[refund.id] = recorded[refund.id]
            continue
        refunded += refund.amount
        left = invoice.tax - given
        tax = left if refunded >= invoice.total else min(left, inclusive_tax(refund.amount, rate))
        result[refund.id] = tax
        given += tax
    return result
