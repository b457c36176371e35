"""VAT in the shape of the EU One-Stop-Shop (Union scheme) return, per quarter or month.

Per period, member state of consumption and rate: the taxable amount and the VAT, in the
invoice's currency and in euros at the ECB rate of the period's last day (or the next day the ECB
published one; :mod:`billing.services.reports.ecb`). Sales are paid invoices by their date, in
four scopes: ``oss`` (another EU member state), ``home`` (the publisher's own country, declared
in the domestic return, not the OSS one), ``reverse charge`` (no VAT charged, a VAT id given) and
``outside EU``. Refunds count in the period they happen: a refund of an invoice of the same
period is a ``refund`` line of that period; a refund of an earlier period's invoice is a
correction of that period (member state, period, VAT difference), as the OSS return's part 3
wants. Each refund's VAT is its share of the invoice's VAT, rounded to the cent. A range with
nothing in it still gives a total line per period: a nil return. The owner filter keeps the
invoices (and refunds of invoices) of groups or of readers, by the invoice's customer.

Columns this report reads (renamed in this module only, at merge): ``invoices.created_at,
customer_country, customer_vat_id, total, tax, tax_rate, currency, status, customer_id``;
``customers.group_id``; ``refunds.amount, created_at, invoice_id``. The VAT rate is the one
the invoice recorded, derived as ``tax / (total - tax)`` to 0.1 % for invoices mirrored before
VAT landed; the publisher's country is the ``PUBLISHER_COUNTRY`` setting.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import Customer, Invoice, InvoiceStatus, Refund
from billing.services.reports import ecb
from billing.services.reports.base import (
    AnySelect,
    Column,
    Filters,
    Granularity,
    Kind,
    Owner,
    Report,
    Table,
    period_end,
    period_of,
)

EU_MEMBER_STATES = frozenset(
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE".split()
)


class Scope:
    """Where a sale is declared."""

    OSS = "oss"
    HOME = "home"
    REVERSE_CHARGE = "reverse charge"
    OUTSIDE_EU = "outside EU"


COLUMNS = (
    Column("period", "Period"),
    Column("scope", "Scope"),
    Column("kind", "Sale or refund"),
    Column("country", "Member state"),
    Column("rate", "VAT rate %", Kind.DECIMAL),
    Column("currency", "Currency"),
    Column("taxable", "Taxable amount", Kind.MONEY),
    Column("vat", "VAT", Kind.MONEY),
    Column("ecb_rate", "ECB rate (per EUR)", Kind.DECIMAL),
    Column("taxable_eur", "Taxable amount (EUR)", Kind.MONEY, currency="eur"),
    Column("vat_eur", "VAT (EUR)", Kind.MONEY, currency="eur"),
    Column("invoices", "Invoices or refunds", Kind.INT),
)
CORRECTION_COLUMNS = (
    Column("period", "Period of this return"),
    Column("country", "Member state"),
    Column("corrected", "Period corrected"),
    Column("currency", "Currency"),
    Column("vat", "VAT difference", Kind.MONEY),
    Column("vat_eur", "VAT difference (EUR)", Kind.MONEY, currency="eur"),
    Column("refunds", "Refunds", Kind.INT),
)


@dataclass
class _Line:
    taxable: int = 0
    vat: int = 0
    count: int = 0


@dataclass
class _Sums:
    lines: dict[tuple[str, str, str, str, Decimal, str], _Line] = field(
        default_factory=lambda: defaultdict(_Line)
    )
    corrections: dict[tuple[str, str, str, str], _Line] = field(
        default_factory=lambda: defaultdict(_Line)
    )


def rate_of(total: int, tax: int) -> Decimal:
    """The VAT rate in % an inclusive ``total`` with ``tax`` was charged at, to 0.1; a credit
    (both negative) was charged at the rate of its amounts too."""
    net = total - tax
    if net == 0 or tax == 0 or (net > 0) != (tax > 0):
        return Decimal("0.0")
    exact = Decimal(abs(tax)) * 100 / Decimal(abs(net))
    return exact.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def invoice_rate(invoice: Invoice) -> Decimal:
    """The VAT rate in % of ``invoice``, to 0.1: the rate it was taxed at as the mirror recorded it
    (``invoices.tax_rate``), else derived from its amounts (invoices mirrored before VAT)."""
    if invoice.tax_rate is not None:
        return Decimal(invoice.tax_rate).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    return rate_of(invoice.total, invoice.tax)


def scope_of(country: str | None, tax: int, vat_id: str | None, home: str | None) -> str:
    """Which part of which return a sale to ``country`` belongs to."""
    code = (country or "").upper()
    if code not in EU_MEMBER_STATES:
        return Scope.OUTSIDE_EU
    if home and code == home.upper():
        return Scope.HOME
    if tax == 0 and vat_id:
        return Scope.REVERSE_CHARGE
    return Scope.OSS


def refund_vat(amount: int, total: int, tax: int) -> int:
    """The VAT share of a refund of ``amount`` of an invoice of ``total`` with ``tax``."""
    if total <= 0:
        return 0
    exact = Decimal(amount) * Decimal(tax) / Decimal(total)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _granularity(filters: Filters) -> Granularity:
    return Granularity.MONTH if filters.granularity == Granularity.MONTH else Granularity.QUARTER


def _periods(filters: Filters, granularity: Granularity) -> list[str]:
    found: list[str] = []
    day = filters.start
    while day <= filters.end:
        label = period_of(day, granularity)
        if label not in found:
            found.append(label)
        day = period_end(label) + timedelta(days=1)
    return found


def _owned(query: AnySelect, filters: Filters) -> AnySelect:
    """``query`` (of invoices) kept to a group's or to readers' invoices when the filter asks."""
    if filters.owner is None:
        return query
    query = query.join(Customer, Invoice.customer_id == Customer.id)
    if filters.owner == Owner.GROUP:
        return query.where(Customer.group_id.is_not(None))
    return query.where(Customer.group_id.is_(None))


def _sales(session: Session, filters: Filters) -> Iterable[Invoice]:
    query = (
        select(Invoice)
        .where(
            Invoice.status == InvoiceStatus.PAID,
            Invoice.created_at >= filters.start_at,
            Invoice.created_at < filters.end_before,
        )
        .order_by(Invoice.created_at, Invoice.id)
        .execution_options(yield_per=2000)
    )
    if filters.currency:
        query = query.where(Invoice.currency == filters.currency)
    return session.scalars(_owned(query, filters))


def _refunds(session: Session, filters: Filters) -> Iterable[tuple[Refund, Invoice]]:
    query = (
        select(Refund, Invoice)
        .join(Invoice, Refund.invoice_id == Invoice.id)
        .where(
            Refund.status != "failed",
            Refund.created_at >= filters.start_at,
            Refund.created_at < filters.end_before,
        )
        .order_by(Refund.created_at, Refund.id)
    )
    if filters.currency:
        query = query.where(Invoice.currency == filters.currency)
    return session.execute(_owned(query, filters))


def sums(session: Session, filters: Filters, home: str | None) -> _Sums:
    """The return's lines before conversion, in minor units of each currency."""
    granularity = _granularity(filters)
    found = _Sums()
    for invoice in _sales(session, filters):
        period = period_of(invoice.created_at.date(), granularity)
        scope = scope_of(invoice.customer_country, invoice.tax, invoice.customer_vat_id, home)
        key = (
            period,
            scope,
            "sale",
            (invoice.customer_country or "").upper(),
            invoice_rate(invoice),
            invoice.currency,
        )
        line = found.lines[key]
        line.taxable += invoice.total - invoice.tax
        line.vat += invoice.tax
        line.count += 1
    for refund, invoice in _refunds(session, filters):
        period = period_of(refund.created_at.date(), granularity)
        original = period_of(invoice.created_at.date(), granularity)
        country = (invoice.customer_country or "").upper()
        vat = refund_vat(refund.amount, invoice.total, invoice.tax)
        scope = scope_of(invoice.customer_country, invoice.tax, invoice.customer_vat_id, home)
        if original == period:
            key = (
                period,
                scope,
                "refund",
                country,
                invoice_rate(invoice),
                invoice.currency,
            )
            line = found.lines[key]
            line.taxable -= refund.amount - vat
            line.vat -= vat
        else:
            line = found.corrections[(period, country, original, invoice.currency)]
            line.taxable -= refund.amount - vat
            line.vat -= vat
        line.count += 1
    return found


def build(session: Session, filters: Filters, now: datetime, limit: int | None) -> Table:
    """The return's lines, a nil-safe total per period, and the corrections of earlier periods."""
    home = current_app.config.get("PUBLISHER_COUNTRY") or None
    rates = ecb.rates(str(current_app.config.get("ECB_RATES_FILE") or ecb.DEFAULT_FILE))
    granularity = _granularity(filters)
    found = sums(session, filters, home)
    notes: list[str] = []
    missing: set[tuple[str, str]] = set()

    def convert(amount: int, currency: str, period: str) -> tuple[Decimal | None, int | None]:
        rate = rates.rate_for(currency, period_end(period))
        if rate is None:
            missing.add((currency.upper(), period))
            return None, None
        return rate.per_euro, ecb.to_euro_cents(amount, rate)

    rows = []
    per_period: dict[str, list[int]] = {p: [0, 0] for p in _periods(filters, granularity)}
    for (period, scope, kind, country, rate, currency), line in sorted(found.lines.items()):
        per_euro, taxable_eur = convert(line.taxable, currency, period)
        _, vat_eur = convert(line.vat, currency, period)
        rows.append(
            (
                period,
                scope,
                kind,
                country,
                rate,
                currency,
                line.taxable,
                line.vat,
                per_euro,
                taxable_eur,
                vat_eur,
                line.count,
            )
        )
        if scope == Scope.OSS and vat_eur is not None and taxable_eur is not None:
            due = per_period.setdefault(period, [0, 0])
            due[0] += taxable_eur
            due[1] += vat_eur
    corrections = []
    for (period, country, corrected, currency), line in sorted(found.corrections.items()):
        _, vat_eur = convert(line.vat, currency, corrected)
        corrections.append((period, country, corrected, currency, line.vat, vat_eur, line.count))
        if vat_eur is not None:
            per_period.setdefault(period, [0, 0])[1] += vat_eur
    totals: list[tuple[object, ...]] = [
        (period, "Total OSS VAT due", None, None, None, "eur", None, None, None, taxable, vat, None)
        for period, (taxable, vat) in sorted(per_period.items())
    ]
    if not rows and not corrections:
        notes.append("Nil return: no sales and no refunds in this range.")
    if home is None:
        notes.append("The publisher's country is not set (PUBLISHER_COUNTRY): no sale is home.")
    else:
        notes.append(f"Sales to {home} (the publisher's country) are 'home': the domestic return.")
    for currency, period in sorted(missing):
        notes.append(
            f"No ECB rate for {currency} at the end of {period} in the rates file (newest day "
            f"{rates.newest}): update billing/data/ecb_rates.csv."
        )
    notes.append("Totals: OSS VAT due per period in EUR, corrections of earlier periods included.")
    if filters.owner is not None:
        notes.append(
            f"Only the {filters.owner.value} customers' invoices: the return to file is the "
            "unfiltered one."
        )
    sections = {
        "Corrections of earlier periods": Table(CORRECTION_COLUMNS, corrections),
    }
    return Table(COLUMNS, rows, totals, notes, sections)


REPORT = Report(
    name="vat",
    title="VAT (One-Stop-Shop)",
    description="Per period, member state and rate: taxable amount and VAT in EUR at the ECB "
    "rate; refunds in the period they happen, corrections of earlier periods listed apart.",
    columns=COLUMNS,
    filters=frozenset({"currency", "owner"}),
    build=build,
    default_granularity=Granularity.QUARTER,
)
