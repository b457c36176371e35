"""Invoices / revenue: every invoice in the range, with net, VAT, gross, paid and refunded, and
what its VAT rests on.

Columns this report reads (all in this module): ``invoices.number, created_at, customer_country,
customer_vat_id, tax, total, amount_paid, amount_refunded, currency, status``; the VAT decision
recorded when the invoice was mirrored (``tax_country``, the member state the VAT is owed to;
``tax_kind``, domestic / oss / reverse_charge / outside_eu; ``tax_rate``, the percentage it was
taxed at; ``tax_evidence``, the declared and card country, and the IP country when GeoIP gave one);
the customer's reader e-mail or group name; the subscription's plan code. Net is ``total - tax``
(prices include VAT). The evidence is written in SQL as one text (``declared BE, card FR``, a
missing one ``unknown``, then ``, IP DE`` when an IP country was recorded, then ``, confirmed by
reader`` when the reader confirmed their country), so the page, CSV, XLSX and PostgreSQL's COPY
show the same words. Invoices mirrored before VAT landed have these four columns empty.

Drafts are not invoices yet and are left out; every other status is listed. The totals per
currency count paid invoices only: revenue is what was paid (the VAT report counts the same).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, case, func, literal, select
from sqlalchemy.orm import Session

from billing.models import Customer, Group, Invoice, InvoiceStatus, Plan, Reader, Subscription
from billing.services.reports.base import AnySelect, Column, Filters, Kind, Owner, Report, Table

COLUMNS = (
    Column("number", "Number"),
    Column("issued", "Date (UTC)", Kind.DATETIME),
    Column("customer", "Reader or group"),
    Column("owner", "Individual or group", Kind.CODE),
    Column("country", "Country", Kind.CODE),
    Column("vat_id", "VAT id"),
    Column("plan", "Plan"),
    Column("net", "Net", Kind.MONEY),
    Column("vat", "VAT", Kind.MONEY),
    Column("gross", "Gross", Kind.MONEY),
    Column("paid", "Paid", Kind.MONEY),
    Column("refunded", "Refunded", Kind.MONEY),
    Column("currency", "Currency", Kind.CODE),
    Column("status", "Status", Kind.CODE),
    Column("tax_country", "VAT country", Kind.CODE),
    Column("tax_kind", "VAT kind", Kind.CODE),
    Column("tax_rate", "VAT rate %", Kind.DECIMAL),
    Column("tax_evidence", "Country evidence", Kind.CODE),
)
MONEY_KEYS = ("net", "vat", "gross", "paid", "refunded")
EVIDENCE_BLANKS = (None,) * 4
"""The totals rows have no VAT country, kind, rate or evidence."""


def _owner() -> Any:
    return case(
        (Customer.group_id.is_not(None), literal(Owner.GROUP.value)),
        else_=literal(Owner.INDIVIDUAL.value),
    )


def _evidence() -> Any:
    """The invoice's country evidence as text: ``declared BE, card FR, IP FR, confirmed by
    reader`` (the IP part only when one was recorded)."""
    evidence = Invoice.tax_evidence
    recorded = evidence["declared_country"].as_string()
    declared = func.coalesce(func.nullif(recorded, ""), "unknown")
    card = func.coalesce(func.nullif(evidence["card_country"].as_string(), ""), "unknown")
    ip_country = func.nullif(evidence["ip_country"].as_string(), "")
    ip = case((ip_country.is_(None), literal("")), else_=literal(", IP ", String) + ip_country)
    confirmed = case(
        (evidence["confirmed_by_reader"].as_boolean(), literal(", confirmed by reader")),
        else_=literal(""),
    )
    text = (
        literal("declared ", String) + declared + literal(", card ", String) + card + ip + confirmed
    )
    return case((recorded.is_(None), None), else_=text)


def _filtered(query: AnySelect, filters: Filters) -> AnySelect:
    query = (
        query.select_from(Invoice)
        .join(Customer, Invoice.customer_id == Customer.id)
        .outerjoin(Reader, Customer.reader_id == Reader.id)
        .outerjoin(Group, Customer.group_id == Group.id)
        .outerjoin(Subscription, Invoice.subscription_id == Subscription.id)
        .outerjoin(Plan, Subscription.plan_id == Plan.id)
        .where(
            Invoice.created_at >= filters.start_at,
            Invoice.created_at < filters.end_before,
            Invoice.status != InvoiceStatus.DRAFT,
        )
    )
    if filters.currency:
        query = query.where(Invoice.currency == filters.currency)
    if filters.country:
        query = query.where(Invoice.customer_country == filters.country)
    if filters.plan:
        query = query.where(Plan.code == filters.plan)
    if filters.owner == Owner.GROUP:
        query = query.where(Customer.group_id.is_not(None))
    elif filters.owner == Owner.INDIVIDUAL:
        query = query.where(Customer.group_id.is_(None))
    return query


def statement(filters: Filters) -> AnySelect:
    """The report's rows, oldest first, one per invoice, in :data:`COLUMNS` order."""
    return _filtered(
        select(
            func.coalesce(Invoice.number, Invoice.stripe_id).label("number"),
            Invoice.created_at.label("issued"),
            func.coalesce(Group.name, Reader.email, Customer.email).label("customer"),
            _owner().label("owner"),
            Invoice.customer_country.label("country"),
            Invoice.customer_vat_id.label("vat_id"),
            Plan.code.label("plan"),
            (Invoice.total - Invoice.tax).label("net"),
            Invoice.tax.label("vat"),
            Invoice.total.label("gross"),
            Invoice.amount_paid.label("paid"),
            Invoice.amount_refunded.label("refunded"),
            Invoice.currency.label("currency"),
            Invoice.status.label("status"),
            Invoice.tax_country.label("tax_country"),
            Invoice.tax_kind.label("tax_kind"),
            Invoice.tax_rate.label("tax_rate"),
            _evidence().label("tax_evidence"),
        ),
        filters,
    ).order_by(Invoice.created_at, Invoice.id)


def totals(session: Session, filters: Filters) -> list[tuple[Any, ...]]:
    """One row per currency over the paid invoices: their count, net, VAT, gross, paid, refunded."""
    found = session.execute(
        _filtered(
            select(
                Invoice.currency,
                func.count(Invoice.id),
                func.coalesce(func.sum(Invoice.total - Invoice.tax), 0),
                func.coalesce(func.sum(Invoice.tax), 0),
                func.coalesce(func.sum(Invoice.total), 0),
                func.coalesce(func.sum(Invoice.amount_paid), 0),
                func.coalesce(func.sum(Invoice.amount_refunded), 0),
            ),
            filters,
        )
        .where(Invoice.status == InvoiceStatus.PAID)
        .group_by(Invoice.currency)
        .order_by(Invoice.currency)
    )
    rows = []
    for currency, count, net, vat, gross, paid, refunded in found:
        blanks = (None,) * 6
        money = (int(net), int(vat), int(gross), int(paid), int(refunded))
        rows.append((f"Total: {count} paid", *blanks, *money, currency, "paid", *EVIDENCE_BLANKS))
    return rows


def build(session: Session, filters: Filters, now: datetime, limit: int | None) -> Table:
    """The invoices of the range (the first ``limit`` of them) and the totals of them all."""
    query = statement(filters)
    if limit is not None:
        query = query.limit(limit)
    rows = [tuple(_plain(v) for v in row) for row in session.execute(query)]
    return Table(COLUMNS, rows, totals(session, filters))


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, InvoiceStatus) else value


REPORT = Report(
    name="invoices",
    title="Invoices and revenue",
    description="Every invoice in the range with net, VAT, gross, paid and refunded; totals per "
    "currency over paid invoices.",
    columns=COLUMNS,
    filters=frozenset({"currency", "plan", "country", "owner"}),
    build=build,
    statement=statement,
)
