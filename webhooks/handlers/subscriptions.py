"""Subscription events: re-fetch the subscription and upsert it with its ledger entries."""

from __future__ import annotations

from billing.services import stripe_mirror
from webhooks.registry import EventContext, handles


@handles(
    "customer.subscription.created",
    why="a subscription started: mirror it (even before its customer is linked) for access",
)
@handles(
    "customer.subscription.updated",
    why="plan, seats, status, period or cancel-at-period-end changed (localstripe never sends it)",
)
@handles("customer.subscription.deleted", why="the subscription ended: access stops, MRR drops")
@handles("customer.subscription.paused", why="collection paused: status for access and MRR")
@handles("customer.subscription.resumed", why="collection resumed after a pause")
@handles(
    "customer.subscription.trial_will_end",
    why="a Stripe-side trial ends in 3 days (our trials are our own): re-sync only",
)
def subscription_changed(context: EventContext) -> None:
    """Mirror the subscription the event is about, as Stripe has it now."""
    stripe_mirror.sync_subscription(
        context.session,
        context.gateway,
        str(context.data_object["id"]),
        now=context.now,
        event_id=context.event_id,
    )
