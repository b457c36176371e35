"""Dunning: subscriptions whose payment is failing now (past due or unpaid), the amount at
risk, how many days overdue, and the last mail sent to the subscriber.

Columns this report reads (renamed here only, at merge): ``subscriptions.status,
past_due_since, current_period_start, group_id`` (a group's subscription or a reader's, for the
owner filter); ``invoices.subscription_id, status, total,
amount_paid, currency``; the mail outbox ``mail_outbox.to, sent_at, subject`` (mails
actually sent).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.models import (
    Customer,
    Group,
    Invoice,
    InvoiceStatus,
    OutboxMessage,
    Plan,
    Reader,
    Subscription,
)
from billing.services.reports.base import Column, Filters, Kind, Owner, Report, Table
from billing.services.stripe_mirror import DUNNING_STATUSES

COLUMNS = (
    Column("subscriber", "Reader or group"),
    Column("email", "E-mail"),
    Column("plan", "Plan"),
    Column("status", "Status"),
    Column("since", "Past due since", Kind.DATETIME),
    Column("days", "Days overdue", Kind.INT),
    Column("at_risk", "Amount at risk", Kind.MONEY),
    Column("currency", "Currency"),
    Column("last_mail", "Last mail sent", Kind.DATETIME),
    Column("last_subject", "Its subject"),
)


def build(session: Session, filters: Filters, now: datetime, limit: int | None) -> Table:
    """One row per failing subscription, longest overdue first; totals per currency."""
    query = (
        select(Subscription, Customer, Plan, Reader, Group)
        .join(Customer, Subscription.customer_id == Customer.id)
        .join(Plan, Subscription.plan_id == Plan.id)
        .outerjoin(Reader, Subscription.reader_id == Reader.id)
        .outerjoin(Group, Subscription.group_id == Group.id)
        .where(Subscription.status.in_(DUNNING_STATUSES))
        .order_by(Subscription.past_due_since, Subscription.id)
    )
    if filters.currency:
        query = query.where(Plan.currency == filters.currency)
    if filters.plan:
        query = query.where(Plan.code == filters.plan)
    if filters.owner == Owner.GROUP:
        query = query.where(Subscription.group_id.is_not(None))
    elif filters.owner == Owner.INDIVIDUAL:
        query = query.where(Subscription.group_id.is_(None))
    open_amounts = dict(
        session.execute(
            select(Invoice.subscription_id, func.sum(Invoice.total - Invoice.amount_paid))
            .where(Invoice.status == InvoiceStatus.OPEN, Invoice.subscription_id.is_not(None))
            .group_by(Invoice.subscription_id)
        ).all()
    )
    rows = []
    sums: dict[str, int] = {}
    for sub, customer, plan, reader, group in session.execute(query):
        email = reader.email if reader is not None else customer.email
        since = sub.past_due_since or sub.current_period_start
        at_risk = int(open_amounts.get(sub.id) or plan.monthly_amount(sub.quantity))
        last = session.execute(
            select(OutboxMessage.sent_at, OutboxMessage.subject)
            .where(OutboxMessage.to == email, OutboxMessage.sent_at.is_not(None))
            .order_by(OutboxMessage.sent_at.desc(), OutboxMessage.id.desc())
            .limit(1)
        ).first()
        rows.append(
            (
                group.name if group is not None else (reader.name if reader else customer.email),
                email,
                plan.code,
                sub.status.value,
                since,
                max((now - since).days, 0),
                at_risk,
                plan.currency,
                last[0] if last else None,
                last[1] if last else None,
            )
        )
        sums[plan.currency] = sums.get(plan.currency, 0) + at_risk
    totals = [
        ("Total at risk", None, None, None, None, None, amount, currency, None, None)
        for currency, amount in sorted(sums.items())
    ]
    notes = [
        "As things stand now (the range does not apply). At risk: the open invoices' unpaid "
        "amount (a month's price when no open invoice is mirrored)."
    ]
    return Table(COLUMNS, rows, totals, notes)


REPORT = Report(
    name="dunning",
    title="Dunning",
    description="Subscriptions past due now: amount at risk, days overdue, last mail sent.",
    columns=COLUMNS,
    filters=frozenset({"currency", "plan", "owner"}),
    build=build,
)
