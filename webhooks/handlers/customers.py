"""Customer events: e-mail, country and default card changes; deletion on Stripe's side."""

from __future__ import annotations

from billing.services import stripe_mirror
from webhooks.registry import EventContext, handles


@handles("customer.updated", why="e-mail, country or default card changed (card shown to readers)")
@handles(
    "customer.deleted",
    why="deleted on Stripe: mark it deleted, so the reader gets a new customer next time",
)
def customer_changed(context: EventContext) -> None:
    """Mirror the customer as Stripe has it now (a deleted or vanished one is marked deleted)."""
    stripe_mirror.sync_customer(
        context.session, context.gateway, str(context.data_object["id"]), now=context.now
    )
