"""A year of realistic demo history for ``flask billing seed-demo``: readers, trials, monthly
and yearly subscriptions with their invoices and ledger entries, cancellations, failed payments,
refunds and one organisation with seats, so the reports and the dashboard have something to say.

Stripe cannot backdate, so this past lives in the mirror only and is marked as demo data: every
Stripe id starts ``demo_``, invoice numbers ``DEMO-``, and every ledger entry says
``{"demo": true}``. It is made once (a second run finds it and does nothing), from a fixed seed,
so every demo shows the same year ending at the moment it was made.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import (
    BillingInterval,
    Customer,
    Group,
    GroupMembership,
    Invoice,
    InvoiceStatus,
    MembershipRole,
    Plan,
    Reader,
    Refund,
    Subscription,
    SubscriptionEvent,
    SubscriptionEventKind,
    SubscriptionStatus,
    Trial,
    TrialStatus,
)
from billing.services.accounts import canonical_email, hash_password

DEMO_ID_PREFIX = "demo_"
"""How every Stripe id of the demo history starts: the mark that it is not on Stripe."""
SEED = 20261202
DAYS = 365
TRIALS_PER_WEEK = (3, 7)
CONVERSION = 0.42
MONTHLY_CANCEL = 0.04
MONTHLY_FAILURE = 0.02
DEMO_VAT = {"BE": 21, "NL": 21, "DE": 19, "FR": 20, "IE": 23, "LU": 17, "AT": 20}
"""Demo VAT rates by country (the real e-newspaper rates are the VAT rate table's business)."""
COUNTRIES = ("BE", "BE", "BE", "NL", "NL", "DE", "FR", "IE", "LU", "AT")
FIRST_NAMES = (
    "Ann",
    "Bram",
    "Chloé",
    "Dirk",
    "Elif",
    "Femke",
    "Guus",
    "Hanna",
    "Ilse",
    "Jan",
    "Katrien",
    "Lars",
    "Mira",
    "Noor",
    "Olaf",
    "Pia",
    "Quinten",
    "Rosa",
    "Stijn",
    "Tess",
)
LAST_NAMES = (
    "Peeters",
    "Janssens",
    "De Smet",
    "Müller",
    "Dubois",
    "Murphy",
    "Visser",
    "Weber",
    "Lambert",
    "Schmit",
    "Gruber",
    "Maes",
    "Claes",
    "Bakker",
    "Martin",
)


@dataclass
class _Maker:
    session: Session
    rng: random.Random
    now: datetime
    password_hash: str
    count: int = 0

    def next_id(self, prefix: str) -> str:
        self.count += 1
        return f"{DEMO_ID_PREFIX}{prefix}_{self.count:05d}"

    def tax(self, total: int, country: str) -> int:
        rate = DEMO_VAT.get(country, 0)
        net = (Decimal(total) * 100 / (100 + rate)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        return total - int(net)

    def reader(self, created: datetime) -> Reader:
        """A verified demo reader created at ``created``."""
        first, last = self.rng.choice(FIRST_NAMES), self.rng.choice(LAST_NAMES)
        self.count += 1
        email = f"{first.lower().replace('é', 'e')}.{self.count}@demo.example.org"
        reader = Reader(
            email=email,
            email_canonical=canonical_email(email),
            name=f"{first} {last}",
            country=self.rng.choice(COUNTRIES),
            password_hash=self.password_hash,
            email_verified_at=created,
            created_at=created,
        )
        self.session.add(reader)
        self.session.flush()
        return reader

    def customer(self, reader: Reader, created: datetime) -> Customer:
        """The demo reader's (mirror-only) Stripe customer, with a Visa card."""
        customer = Customer(
            stripe_id=self.next_id("cus"),
            reader_id=reader.id,
            email=reader.email,
            email_canonical=reader.email_canonical,
            country=reader.country,
            card_brand="visa",
            card_last4="4242",
            created_at=created,
        )
        self.session.add(customer)
        self.session.flush()
        return customer

    def entry(
        self,
        sub: Subscription,
        plan: Plan,
        kind: SubscriptionEventKind,
        at: datetime,
        before: int,
        after: int,
    ) -> None:
        self.session.add(
            SubscriptionEvent(
                subscription_id=sub.id,
                kind=kind,
                occurred_at=at,
                currency=plan.currency,
                mrr_before=before,
                mrr_after=after,
                mrr_delta=after - before,
                details={"demo": True},
            )
        )

    def invoice(
        self,
        customer: Customer,
        sub: Subscription,
        at: datetime,
        total: int,
        status: InvoiceStatus = InvoiceStatus.PAID,
    ) -> Invoice:
        country = customer.country or "BE"
        tax = 0 if sub.group_id is not None and country != "BE" else self.tax(total, country)
        invoice = Invoice(
            stripe_id=self.next_id("in"),
            number=f"DEMO-{self.count:06d}",
            customer_id=customer.id,
            subscription_id=sub.id,
            status=status,
            currency="eur",
            subtotal=total,
            tax=tax,
            total=total,
            amount_paid=total if status == InvoiceStatus.PAID else 0,
            customer_country=country,
            customer_vat_id=None,
            created_at=at,
            paid_at=at if status == InvoiceStatus.PAID else None,
        )
        self.session.add(invoice)
        self.session.flush()
        return invoice


def _months(interval: BillingInterval) -> int:
    return 1 if interval == BillingInterval.MONTH else 12


def _add_months(moment: datetime, months: int) -> datetime:
    month = moment.month - 1 + months
    year, month = moment.year + month // 12, month % 12 + 1
    return moment.replace(year=year, month=month, day=min(moment.day, 28))


def _subscriber(
    maker: _Maker,
    plans: dict[str, Plan],
    reader: Reader,
    customer: Customer,
    start: datetime,
    converted: bool,
) -> None:
    """One subscription from ``start`` to now: renewals, maybe a failure, maybe a cancellation."""
    rng, now = maker.rng, maker.now
    plan = plans["individual-yearly"] if rng.random() < 0.25 else plans["individual-monthly"]
    sub = Subscription(
        stripe_id=maker.next_id("sub"),
        customer_id=customer.id,
        reader_id=reader.id,
        plan_id=plan.id,
        status=SubscriptionStatus.ACTIVE,
        quantity=1,
        current_period_start=start,
        current_period_end=_add_months(start, _months(plan.interval)),
        created_at=start,
        updated_at=start,
    )
    maker.session.add(sub)
    maker.session.flush()
    mrr = plan.monthly_amount()
    kind = SubscriptionEventKind.CONVERTED if converted else SubscriptionEventKind.CREATED
    maker.entry(sub, plan, kind, start, 0, mrr)
    paid = [maker.invoice(customer, sub, start, plan.amount)]
    period_start = start
    while True:
        period_end = _add_months(period_start, _months(plan.interval))
        months = _months(plan.interval)
        if rng.random() < MONTHLY_CANCEL * months:
            cancelled = period_start + (period_end - period_start) * rng.uniform(0.1, 0.9)
            if cancelled > now:
                break
            maker.entry(sub, plan, SubscriptionEventKind.CANCELLED, cancelled, mrr, mrr)
            sub.cancel_at_period_end, sub.canceled_at = True, cancelled
            if period_end <= now:
                maker.entry(sub, plan, SubscriptionEventKind.ENDED, period_end, mrr, 0)
                sub.status, sub.ended_at = SubscriptionStatus.CANCELED, period_end
            break
        if period_end > now:
            break
        if rng.random() < MONTHLY_FAILURE * months:
            maker.entry(sub, plan, SubscriptionEventKind.PAST_DUE, period_end, mrr, mrr)
            failed = maker.invoice(customer, sub, period_end, plan.amount, InvoiceStatus.OPEN)
            recovered = rng.random() < 0.5
            settle = period_end + timedelta(days=rng.randint(2, 12))
            if settle > now:
                sub.status, sub.past_due_since = SubscriptionStatus.PAST_DUE, period_end
                sub.current_period_start, sub.current_period_end = (
                    period_end,
                    _add_months(period_end, months),
                )
                return
            if recovered:
                maker.entry(sub, plan, SubscriptionEventKind.RECOVERED, settle, mrr, mrr)
                failed.status, failed.amount_paid, failed.paid_at = (
                    InvoiceStatus.PAID,
                    failed.total,
                    settle,
                )
            else:
                failed.status = InvoiceStatus.UNCOLLECTIBLE
                maker.entry(sub, plan, SubscriptionEventKind.ENDED, settle, mrr, 0)
                sub.status, sub.ended_at = SubscriptionStatus.CANCELED, settle
                return
        else:
            paid.append(maker.invoice(customer, sub, period_end, plan.amount))
        maker.entry(sub, plan, SubscriptionEventKind.RENEWED, period_end, mrr, mrr)
        period_start = period_end
    sub.current_period_start = period_start
    sub.current_period_end = _add_months(period_start, _months(plan.interval))
    if rng.random() < 0.05 and paid:
        invoice = rng.choice(paid)
        amount = invoice.total if rng.random() < 0.5 else invoice.total // 2
        at = min(invoice.created_at + timedelta(days=rng.randint(1, 20)), now)
        maker.session.add(
            Refund(
                stripe_id=maker.next_id("re"),
                invoice_id=invoice.id,
                amount=amount,
                currency="eur",
                status="succeeded",
                reason="requested_by_customer",
                created_at=at,
            )
        )
        invoice.amount_refunded = amount
        maker.entry(sub, plan, SubscriptionEventKind.REFUNDED, at, mrr, mrr)


def _organisation(maker: _Maker, plans: dict[str, Plan], start: datetime) -> None:
    """One organisation with 25 yearly seats, 18 of them taken."""
    seat = plans["group-seat-yearly"]
    group = Group(
        name="Demo Institute for European Affairs",
        billing_email="billing@demo-institute.example",
        vat_id="DE811128135",
        country="DE",
        created_at=start,
    )
    maker.session.add(group)
    maker.session.flush()
    customer = Customer(
        stripe_id=maker.next_id("cus"),
        group_id=group.id,
        email=group.billing_email,
        email_canonical=group.billing_email,
        country="DE",
        created_at=start,
    )
    maker.session.add(customer)
    maker.session.flush()
    sub = Subscription(
        stripe_id=maker.next_id("sub"),
        customer_id=customer.id,
        group_id=group.id,
        plan_id=seat.id,
        status=SubscriptionStatus.ACTIVE,
        quantity=20,
        current_period_start=start,
        current_period_end=_add_months(start, 12),
        created_at=start,
        updated_at=start,
    )
    maker.session.add(sub)
    maker.session.flush()
    maker.entry(sub, seat, SubscriptionEventKind.CREATED, start, 0, seat.monthly_amount(20))
    maker.invoice(customer, sub, start, seat.amount * 20)
    grown = start + timedelta(days=150)
    maker.entry(
        sub,
        seat,
        SubscriptionEventKind.SEATS_CHANGED,
        grown,
        seat.monthly_amount(20),
        seat.monthly_amount(25),
    )
    maker.invoice(customer, sub, grown, seat.amount * 5 * 7 // 12)
    sub.quantity = 25
    for _ in range(18):
        member = maker.reader(start + timedelta(days=maker.rng.randint(1, 200)))
        maker.session.add(
            GroupMembership(
                group_id=group.id,
                reader_id=member.id,
                role=MembershipRole.MEMBER,
                joined_at=member.created_at,
            )
        )


def is_demo(stripe_id: str | None) -> bool:
    """Whether a mirrored Stripe id is demo history's (in the mirror only, never on Stripe): such
    rows are left alone by ``reconcile``, which would otherwise find them missing on Stripe."""
    return bool(stripe_id) and str(stripe_id).startswith(DEMO_ID_PREFIX)


def seed_history(session: Session, *, now: datetime, password: str) -> int:
    """Write the demo year ending at ``now`` (once); the number of demo readers made (0 when the
    history is there already). Needs the demo plans."""
    demo = Customer.stripe_id.like(f"{DEMO_ID_PREFIX}%")
    if session.scalar(select(Customer.id).where(demo).limit(1)):
        return 0
    plans = {p.code: p for p in session.scalars(select(Plan))}
    maker = _Maker(session, random.Random(SEED), now, hash_password(password))  # noqa: S311
    start = now - timedelta(days=DAYS)
    _organisation(maker, plans, start + timedelta(days=20))
    readers = 18
    day = start
    while day < now:
        for _ in range(maker.rng.randint(*TRIALS_PER_WEEK)):
            began = day + timedelta(hours=maker.rng.randint(0, 24 * 7 - 1))
            if began >= now:
                continue
            reader = maker.reader(began)
            readers += 1
            ends = began + timedelta(days=14)
            trial = Trial(
                reader_id=reader.id,
                email_canonical=reader.email_canonical,
                status=TrialStatus.ACTIVE,
                started_at=began,
                ends_at=ends,
            )
            session.add(trial)
            if ends > now:
                continue
            if maker.rng.random() < CONVERSION:
                trial.status, trial.converted_at = TrialStatus.CONVERTED, ends
                customer = maker.customer(reader, ends)
                _subscriber(maker, plans, reader, customer, ends, converted=True)
            else:
                trial.status = TrialStatus.EXPIRED
                trial.reminder_sent_at = ends - timedelta(days=3)
                trial.ended_mail_sent_at = ends
        day += timedelta(days=7)
    session.flush()
    return readers
