"""Renewals in localstripe: the end of a paid period, handled the way Stripe documents it.

localstripe never renews: a subscription's period is always its first (its start plus one
interval). At ``current_period_end`` Stripe starts the next period and invoices it
(``billing_reason=subscription_cycle``, pending invoice items such as seat prorations included):
with ``charge_automatically`` it charges the default payment method (declined: the subscription is
``past_due`` and the invoice stays ``open``); with ``send_invoice`` it finalizes and sends the
invoice, due ``days_until_due`` days later. A subscription set to cancel at the period end ends
instead (``canceled``). Tests and the demo cannot wait a year and localstripe has no test clocks,
so the stand-in adds one helper that Stripe does not have (on Stripe, advance a test clock past
``current_period_end``):

- ``POST /v1/test_helpers/subscriptions/{id}/renew``: the period ends now, as described above;
  answers the subscription. ``customer.subscription.updated`` and the invoice's events are sent.

:func:`install` patches the loaded ``localstripe.resources`` and adds the route to its server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dateutil.relativedelta import relativedelta

RENEW_URL = "/v1/test_helpers/subscriptions/{id}/renew"

_STEPS = {
    "day": relativedelta(days=1),
    "week": relativedelta(days=7),
    "month": relativedelta(months=1),
    "year": relativedelta(years=1),
}


def install(resources: Any, server: Any) -> None:
    """Teach the localstripe in ``resources`` / ``server`` to renew a subscription on demand."""
    subscription_cls, item_cls, invoice_cls = (
        resources.Subscription,
        resources.SubscriptionItem,
        resources.Invoice,
    )
    UserError, Event, schedule_webhook = (
        resources.UserError,
        resources.Event,
        resources.schedule_webhook,
    )
    original_period = item_cls._current_period

    def current_period(self: Any) -> dict[str, int]:
        period = original_period(self)
        if not self._subscription:
            return dict(period)
        subscription = subscription_cls._api_retrieve(self._subscription)
        cycles = getattr(subscription, "_tollgate_cycles", 0)
        if cycles == 0:
            return dict(period)
        step = _STEPS.get(self.plan.interval, relativedelta(months=1)) * self.plan.interval_count
        start = datetime.fromtimestamp(period["start"])
        for _ in range(cycles):
            start += step
        return {"start": int(start.timestamp()), "end": int((start + step).timestamp())}

    item_cls._current_period = current_period

    def renew(id: str, **data: Any) -> Any:
        if data:
            raise UserError(400, "Unexpected " + ", ".join(data))
        subscription = subscription_cls._api_retrieve(id)
        if subscription.status in ("canceled", "incomplete_expired", "incomplete"):
            raise UserError(400, f"A subscription {subscription.status} does not renew")
        if subscription.cancel_at_period_end:
            subscription_cls._api_delete(id)
            ended = subscription_cls._api_retrieve(id)
            ended.ended_at = subscription.current_period_end
            return ended
        subscription._tollgate_cycles = getattr(subscription, "_tollgate_cycles", 0) + 1
        subscription._create_invoice()
        invoice = invoice_cls._api_retrieve(subscription.latest_invoice)
        invoice.billing_reason = "subscription_cycle"
        schedule_webhook(Event("customer.subscription.updated", subscription))
        return subscription

    server.app.router.add_route("POST", RENEW_URL, server.api_extra(renew, RENEW_URL))
