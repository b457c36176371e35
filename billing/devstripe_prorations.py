"""Seat-count prorations in localstripe, computed the way Stripe documents them.

localstripe prorates crudely: changing a subscription's quantity adds an "Unused time" item worth
minus every earlier invoice of the subscription, whatever the date, ignores ``proration_date``,
refuses ``proration_behavior`` with a 500, and its invoice preview needs the plan on every item.
Organisations add and remove seats mid-year, so the stand-in learns, for a change of **quantity
on the same price** (a change of price keeps localstripe's own behaviour):

- ``POST /v1/subscriptions/{id}`` with ``items[0][quantity]``, optional ``proration_date`` (the
  moment the proration is computed for; default now) and ``proration_behavior``
  (``create_prorations``, the default, or ``none``): two pending invoice items with
  ``proration: true`` over ``[proration_date, current_period_end]``, "Unused time on N x plan"
  (minus the old quantity's share of the period left) and "Remaining time on M x plan" (the new
  quantity's share), each rounded to the minor unit, taxed at the subscription's
  ``default_tax_rates``. They are invoiced with the next invoice, as on Stripe;
  ``always_invoice`` is refused (400): the stand-in does not invoice prorations at once.
- ``POST /v1/invoices/create_preview`` with ``subscription`` and ``subscription_details[items]``
  changing only the quantity (and ``subscription_details[proration_date]``): the next invoice as
  it would be after the change with the default ``create_prorations``: pending items, the two
  proration lines (``period.start`` = the proration date) and the next period at the new
  quantity. Nothing is stored.

- **A change of interval** (``items[0][plan]`` monthly <-> yearly, which localstripe invoices
  and charges at once), in the update and in the preview: the unused time of the old price is
  credited as Stripe does, as one "Unused time" line of minus the old price's share of the period
  left at ``proration_date`` (``subscription_details[proration_date]`` in the preview; default
  now) instead of minus every earlier invoice, whatever the date. So a switch confirmed with the
  preview's ``proration_date`` is charged what the preview said. Other changes of price keep
  localstripe's own behaviour.

The share of the period left is counted in seconds, as Stripe does: ``amount * quantity *
(period_end - proration_date) / (period_end - period_start)``, rounded half up.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

BEHAVIOURS = ("create_prorations", "none")


def share_left(amount: int, start: int, end: int, at: int) -> int:
    """What ``amount`` for the period ``[start, end]`` is worth from ``at`` to ``end``, rounded
    half up to the minor unit (0 outside the period, all of it before it starts)."""
    at = min(max(at, start), end)
    if end <= start:
        return 0
    exact = Decimal(amount) * Decimal(end - at) / Decimal(end - start)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass
class IntervalChange:
    """The unused time a change of interval credits: of ``subscription``, worth ``credit``,
    from ``at`` to ``period_end``; ``lines`` are the "Unused time" items localstripe made."""

    subscription: str
    credit: int
    at: int
    period_end: int
    lines: list[Any] = field(default_factory=list)


CHANGING_INTERVAL: contextvars.ContextVar[IntervalChange | None] = contextvars.ContextVar(
    "devstripe_changing_interval", default=None
)
"""The change of interval being made or previewed, while it is."""


def _install_interval_changes(resources: Any) -> None:
    """Credit the unused time of a change of interval as Stripe does, at ``proration_date``."""
    Invoice, InvoiceItem, Subscription = (
        resources.Invoice,
        resources.InvoiceItem,
        resources.Subscription,
    )
    to_int, store = resources.try_convert_to_int, resources.store

    def interval_change(
        subscription: Any, items: Any, proration_date: Any
    ) -> IntervalChange | None:
        """What moving ``subscription`` to ``items`` (as the request gives them) credits, when
        it changes the interval; None otherwise, or for a request localstripe refuses anyway."""
        if subscription is None or not isinstance(items, list) or len(items) != 1:
            return None
        plan_id = items[0].get("plan") if isinstance(items[0], dict) else None
        at = to_int(proration_date) if proration_date is not None else int(time.time())
        if not isinstance(plan_id, str) or type(at) is not int:
            return None
        new_plan = store.get(f"plan:{plan_id}")
        old_item = subscription.items._list[0]
        old_plan = old_item.plan
        if new_plan is None or (new_plan.interval, new_plan.interval_count) == (
            old_plan.interval,
            old_plan.interval_count,
        ):
            return None
        start, end = subscription.current_period_start, subscription.current_period_end
        credit = share_left(old_item._calculate_amount(), start, end, at)
        return IntervalChange(subscription.id, credit, min(max(at, start), end), end)

    original_update = Subscription._update

    def update(self: Any, *args: Any, **data: Any) -> Any:
        change = interval_change(self, data.get("items"), data.get("proration_date"))
        token = CHANGING_INTERVAL.set(change)
        try:
            return original_update(self, *args, **data)
        finally:
            CHANGING_INTERVAL.reset(token)

    original_next_invoice = Invoice._get_next_invoice.__func__

    def next_invoice(cls: Any, *args: Any, **kwargs: Any) -> Any:
        subscription_id = kwargs.get("subscription")
        subscription = (
            store.get(f"subscription:{subscription_id}")
            if isinstance(subscription_id, str)
            else None
        )
        change = interval_change(
            subscription,
            kwargs.get("subscription_items"),
            kwargs.get("subscription_proration_date"),
        )
        token = CHANGING_INTERVAL.set(change)
        try:
            return original_next_invoice(cls, *args, **kwargs)
        finally:
            CHANGING_INTERVAL.reset(token)

    original_item_init = InvoiceItem.__init__

    def invoice_item_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_item_init(self, *args, **kwargs)
        change = CHANGING_INTERVAL.get()
        if (
            change is not None
            and self.description == "Unused time"
            and self.subscription == change.subscription
        ):
            change.lines.append(self)

    original_invoice_init = Invoice.__init__

    def invoice_init(self: Any, *args: Any, items: Any = (), **kwargs: Any) -> None:
        change = CHANGING_INTERVAL.get()
        lines = list(items)
        if change is not None and change.lines:
            kept, *dropped = change.lines
            kept.amount = -change.credit
            kept.period = {"start": change.at, "end": change.period_end}
            for line in dropped:
                lines = [item for item in lines if item is not line]
                store.pop(f"invoiceitem:{line.id}", None)
            change.lines = []
        original_invoice_init(self, *args, items=lines, **kwargs)

    Subscription._update = update
    Invoice._get_next_invoice = classmethod(next_invoice)
    InvoiceItem.__init__ = invoice_item_init
    Invoice.__init__ = invoice_init


def install(resources: Any) -> None:
    """Teach the localstripe in ``resources`` Stripe's prorations of a change of quantity or of
    interval."""
    _install_interval_changes(resources)
    subscription_cls, invoice_cls = resources.Subscription, resources.Invoice
    invoice_item_cls, subscription_item_cls = resources.InvoiceItem, resources.SubscriptionItem
    UserError, store, to_int = resources.UserError, resources.store, resources.try_convert_to_int

    original_update = subscription_cls._update
    original_next_invoice = invoice_cls._get_next_invoice.__func__

    def quantity_change(subscription: Any, items: Any) -> int | None:
        """The new quantity when ``items`` changes only the quantity of the one price."""
        if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], dict):
            return None
        item = items[0]
        if item.get("plan") not in (None, "", subscription.plan.id):
            return None
        quantity = to_int(item.get("quantity"))
        if type(quantity) is not int or quantity <= 0 or quantity == subscription.quantity:
            return None
        return quantity

    def proration_moment(value: Any) -> int:
        moment = to_int(value) if value is not None else int(time.time())
        if type(moment) is not int or moment <= 1500000000:
            raise UserError(400, "Invalid proration_date")
        return moment

    def proration_items(subscription: Any, old: int, new: int, at: int) -> list[Any]:
        """The two pending items of a change from ``old`` to ``new`` seats at ``at``."""
        plan = subscription.plan
        start, end = subscription.current_period_start, subscription.current_period_end
        rates = [rate.id for rate in subscription.default_tax_rates or []]
        day = time.strftime("%d %b %Y", time.gmtime(at))
        name = plan.name or plan.id
        lines = [
            (-share_left(plan.amount * old, start, end, at), old, "Unused"),
            (share_left(plan.amount * new, start, end, at), new, "Remaining"),
        ]
        return [
            invoice_item_cls(
                amount=amount,
                currency=plan.currency,
                customer=subscription.customer,
                subscription=subscription.id,
                plan=plan.id,
                proration=True,
                description=f"{label} time on {quantity} x {name} after {day}",
                period_start=min(max(at, start), end),
                period_end=end,
                tax_rates=rates,
            )
            for amount, quantity, label in lines
        ]

    def pending_ids(customer: str) -> set[str]:
        listed = invoice_item_cls._api_list_all(None, customer=customer, limit=99)._list
        return {item.id for item in listed}

    def update(self: Any, proration_behavior: Any = None, **data: Any) -> None:
        new_quantity = quantity_change(self, data.get("items"))
        if proration_behavior not in (None, *BEHAVIOURS):
            raise UserError(400, f"proration_behavior {proration_behavior!r} is not supported")
        if new_quantity is None:
            original_update(self, **data)
            return
        at = proration_moment(data.get("proration_date"))
        old_quantity = self.quantity
        before = pending_ids(self.customer)
        original_update(self, **data)
        for crude in pending_ids(self.customer) - before:
            del store[f"invoiceitem:{crude}"]
        if proration_behavior != "none":
            proration_items(self, old_quantity, new_quantity, at)

    subscription_cls._update = update

    def next_invoice(cls: Any, *args: Any, **kwargs: Any) -> Any:
        subscription = kwargs.get("subscription")
        current = None
        if kwargs.get("upcoming") and isinstance(subscription, str) and subscription:
            current = subscription_cls._api_retrieve(subscription)
        new_quantity = (
            quantity_change(current, kwargs.get("subscription_items")) if current else None
        )
        if current is None or new_quantity is None:
            return original_next_invoice(cls, *args, **kwargs)
        at = proration_moment(kwargs.get("subscription_proration_date"))
        prorations = proration_items(current, current.quantity, new_quantity, at)
        next_period = subscription_item_cls(
            subscription=current.id, plan=current.plan.id, quantity=new_quantity
        )
        invoice = cls(
            customer=current.customer,
            subscription=current.id,
            items=[*prorations, next_period],
            default_tax_rates=[rate.id for rate in current.default_tax_rates or []] or None,
            date=current.current_period_end,
            simulation=True,
            upcoming=True,
        )
        for made in prorations:
            del store[f"invoiceitem:{made.id}"]
        del store[f"subscription_item:{next_period.id}"]
        return invoice

    invoice_cls._get_next_invoice = classmethod(next_invoice)
