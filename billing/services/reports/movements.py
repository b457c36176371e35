"""MRR and its movements per month and currency, from the append-only subscription ledger.

ChartMogul's definitions, per **customer** (a reader's or a group's Stripe customer), not per
subscription; each ledger entry moves its customer's MRR from one amount to another:

- **new**: from 0 to more, for a customer who never had MRR before;
- **reactivation**: from 0 to more, for a customer who had MRR once and churned;
- **expansion** / **contraction**: up / down, staying above 0 (seats, plan changes, a second
  subscription, or ending one of two);
- **churn**: down to 0. *Involuntary* when the subscription that ended was past due (its
  payment failed); *voluntary* otherwise (cancelled at period end or at once).

The two choices ChartMogul leaves open, made here: **churn counts when the subscription ends**
(for a cancellation at period end, at the end of the paid period: the ledger's ``ended``), not
when the cancellation is scheduled; and **past-due subscriptions keep counting in MRR** until
Stripe ends them (the ledger's ``past_due`` leaves MRR unchanged; no auto-churn after N days).
Yearly plans count 1/12 a month (the ledger's amounts). **MRR excludes VAT**: plans' prices
include it, so a subscription's amount is reduced by the VAT share at the rate of its latest
invoice issued by then (``invoices.tax_rate``: ``amount * rate / (100 + rate)``, rounded to the
cent; an invoice mirrored before VAT landed gives ``tax / total`` instead). Before its first
invoice the first one's rate applies; with none known there is no VAT. Every finalised invoice
counts (paid or not: drafts excepted), since its rate is what the subscription was charged at
from then on, so a rate change (a new national rate, a reader who moved) changes the
subscription's MRR at its first invoice at the new rate: an expansion or a contraction then, and a
past month keeps the rate it had.

Everything is a sum over entries up to a moment, so a past month's numbers stay as they were
when later entries are appended. For each month and currency, MRR at the end = at the start +
new + expansion + reactivation - contraction - churn, and :class:`Month` checks it.

Columns this module reads (renamed here only, at merge): ``subscription_events.subscription_id,
kind, occurred_at, currency, mrr_after``; ``subscriptions.customer_id, group_id``;
``customers.country``; ``invoices.subscription_id, created_at, total, tax, tax_rate, status``.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from fractions import Fraction

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import (
    Customer,
    Invoice,
    InvoiceStatus,
    Subscription,
    SubscriptionEvent,
    SubscriptionEventKind,
)
from billing.services.reports.base import Filters, Owner, months, next_month


@dataclass
class Month:
    """One month of one currency: MRR at its start and end, the movements, the churn counts."""

    month: date
    currency: str
    start: int = 0
    new: int = 0
    expansion: int = 0
    reactivation: int = 0
    contraction: int = 0
    churn: int = 0
    churn_voluntary: int = 0
    churn_involuntary: int = 0
    end: int = 0
    customers_start: int = 0
    customers_end: int = 0
    new_customers: int = 0
    reactivated_customers: int = 0
    churned_voluntary: int = 0
    churned_involuntary: int = 0

    @property
    def net_movement(self) -> int:
        """new + expansion + reactivation - contraction - churn."""
        return self.new + self.expansion + self.reactivation - self.contraction - self.churn

    @property
    def balances(self) -> bool:
        """Whether the roll-forward identity holds: end = start + the movements."""
        return self.end == self.start + self.net_movement

    @property
    def churned_customers(self) -> int:
        """Customers who churned this month, for either reason."""
        return self.churned_voluntary + self.churned_involuntary


VatShare = tuple[datetime, Fraction]
"""When an invoice was issued, and the share of an inclusive amount that is its VAT."""


@dataclass
class _Subscription:
    customer: int
    currency: str
    gross: int = 0
    """The ledger's last amount (VAT included)."""
    mrr: int = 0
    """``gross`` without VAT, at the share of the time it was last computed."""
    past_due: bool = False
    vat: list[VatShare] = field(default_factory=list)
    """The VAT shares of its finalised invoices, oldest first."""

    def net(self, amount: int, at: datetime) -> int:
        """``amount`` without the VAT share of the latest invoice issued by ``at`` (the first
        invoice's before it)."""
        if not self.vat or amount == 0:
            return amount
        index = bisect.bisect_right([issued for issued, _ in self.vat], at) - 1
        _, fraction = self.vat[max(index, 0)]
        return amount - math.floor(amount * fraction + Fraction(1, 2))


def vat_fraction(rate: Decimal | None, total: int, tax: int) -> Fraction | None:
    """The exact share of an inclusive amount that is VAT at ``rate`` %: ``rate / (100 + rate)``;
    for an invoice without a recorded rate ``tax / total`` (None when that tells nothing)."""
    if rate is not None:
        return Fraction(rate) / (100 + Fraction(rate))
    if total <= 0:
        return None
    return Fraction(tax, total)


def _entries(
    session: Session, filters: Filters, before: datetime
) -> Iterator[tuple[SubscriptionEvent, int]]:
    query = (
        select(SubscriptionEvent, Subscription.customer_id)
        .join(Subscription, SubscriptionEvent.subscription_id == Subscription.id)
        .join(Customer, Subscription.customer_id == Customer.id)
        .where(SubscriptionEvent.occurred_at < before)
        .order_by(SubscriptionEvent.occurred_at, SubscriptionEvent.id)
        .execution_options(yield_per=2000)
    )
    if filters.currency:
        query = query.where(SubscriptionEvent.currency == filters.currency)
    if filters.country:
        query = query.where(Customer.country == filters.country)
    if filters.owner == Owner.GROUP:
        query = query.where(Subscription.group_id.is_not(None))
    elif filters.owner == Owner.INDIVIDUAL:
        query = query.where(Subscription.group_id.is_(None))
    yield from session.execute(query)


def _vat_shares(session: Session, before: datetime) -> dict[int, list[VatShare]]:
    """Per subscription, the VAT share of each of its finalised invoices issued before
    ``before``, oldest first."""
    shares: dict[int, list[VatShare]] = defaultdict(list)
    issued = session.execute(
        select(
            Invoice.subscription_id,
            Invoice.created_at,
            Invoice.tax_rate,
            Invoice.total,
            Invoice.tax,
        )
        .where(
            Invoice.subscription_id.is_not(None),
            Invoice.status != InvoiceStatus.DRAFT,
            Invoice.created_at < before,
        )
        .order_by(Invoice.created_at, Invoice.id)
    )
    for subscription_id, created_at, rate, total, tax in issued:
        fraction = vat_fraction(rate, total, tax)
        if subscription_id is not None and fraction is not None:
            shares[subscription_id].append((created_at, fraction))
    return shares


def _rate_points(shares: dict[int, list[VatShare]]) -> list[tuple[datetime, int]]:
    """(issued, subscription id) of every invoice whose VAT share differs from the one before
    it (of the same subscription), oldest first: the moments a subscription's MRR may move."""
    points = []
    for subscription_id, found in shares.items():
        for (_, earlier), (issued, fraction) in itertools.pairwise(found):
            if fraction != earlier:
                points.append((issued, subscription_id))
    return sorted(points)


def monthly(session: Session, filters: Filters) -> list[Month]:
    """Every month the range touches, whole, per currency, oldest first (currencies in order)."""
    wanted = months(filters.start, filters.end)
    bounds = [datetime.combine(m, time(), tzinfo=UTC) for m in [*wanted, next_month(wanted[-1])]]
    vat = _vat_shares(session, bounds[-1])
    subscriptions: dict[int, _Subscription] = {}
    customers: dict[tuple[str, int], int] = defaultdict(int)
    ever_paid: set[tuple[str, int]] = set()
    snapshots: list[dict[str, tuple[int, int]]] = []
    buckets: dict[tuple[int, str], Month] = {}

    def snapshot() -> dict[str, tuple[int, int]]:
        state: dict[str, tuple[int, int]] = {}
        for (currency, _), mrr in customers.items():
            total, count = state.get(currency, (0, 0))
            state[currency] = (total + mrr, count + (mrr > 0))
        return state

    def take_snapshots(moment: datetime) -> None:
        while len(snapshots) < len(bounds) and moment >= bounds[len(snapshots)]:
            snapshots.append(snapshot())

    def move(sub: _Subscription, new_mrr: int) -> None:
        """Set ``sub``'s MRR and add its customer's move to the month it falls in."""
        key = (sub.currency, sub.customer)
        before = customers[key]
        after = before - sub.mrr + new_mrr
        sub.mrr, customers[key] = new_mrr, after
        if snapshots:
            index = len(snapshots) - 1
            month = buckets.setdefault((index, sub.currency), Month(wanted[index], sub.currency))
            _classify(month, before, after, reactivated=key in ever_paid, past_due=sub.past_due)
        if after > 0:
            ever_paid.add(key)

    rate_changes = _rate_points(vat)
    position = 0

    def apply_rate_changes(until: datetime | None) -> None:
        """Recompute the MRR of subscriptions whose invoices changed rate up to ``until``."""
        nonlocal position
        while position < len(rate_changes) and (
            until is None or rate_changes[position][0] <= until
        ):
            issued, subscription_id = rate_changes[position]
            position += 1
            take_snapshots(issued)
            changed = subscriptions.get(subscription_id)
            if changed is not None and changed.gross:
                move(changed, changed.net(changed.gross, issued))

    for entry, customer_id in _entries(session, filters, bounds[-1]):
        apply_rate_changes(entry.occurred_at)
        take_snapshots(entry.occurred_at)
        sub = subscriptions.setdefault(
            entry.subscription_id,
            _Subscription(customer_id, entry.currency, vat=vat.get(entry.subscription_id, [])),
        )
        if entry.kind == SubscriptionEventKind.PAST_DUE:
            sub.past_due = True
        elif entry.kind == SubscriptionEventKind.RECOVERED:
            sub.past_due = False
        sub.gross = entry.mrr_after
        move(sub, sub.net(entry.mrr_after, entry.occurred_at))
    apply_rate_changes(None)
    while len(snapshots) < len(bounds):
        snapshots.append(snapshot())
    currencies = sorted({c for state in snapshots for c in state} | {c for _, c in buckets})
    found = []
    for index, moment in enumerate(wanted):
        for currency in currencies:
            month = buckets.get((index, currency), Month(moment, currency))
            month.start, month.customers_start = snapshots[index].get(currency, (0, 0))
            month.end, month.customers_end = snapshots[index + 1].get(currency, (0, 0))
            found.append(month)
    return found


def _classify(month: Month, before: int, after: int, *, reactivated: bool, past_due: bool) -> None:
    """Add one customer's move from ``before`` to ``after`` to the month's movements."""
    if before == 0 and after > 0:
        if reactivated:
            month.reactivation += after
            month.reactivated_customers += 1
        else:
            month.new += after
            month.new_customers += 1
    elif before > 0 and after == 0:
        month.churn += before
        if past_due:
            month.churn_involuntary += before
            month.churned_involuntary += 1
        else:
            month.churn_voluntary += before
            month.churned_voluntary += 1
    elif after > before:
        month.expansion += after - before
    elif after < before:
        month.contraction += before - after
