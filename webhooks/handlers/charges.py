"""Charge events: refunds and disputes (chargebacks), recorded against the invoice they touch."""

from __future__ import annotations

from billing.gateway import StripeObjectNotFoundError
from billing.services import stripe_mirror
from webhooks.registry import EventContext, handles


@handles("charge.refunded", why="money given back: Refund rows, invoice amount_refunded, ledger")
def charge_refunded(context: EventContext) -> None:
    """Mirror every refund of the charge (localstripe never sends this event)."""
    stripe_mirror.sync_charge_refunds(
        context.session,
        context.gateway,
        str(context.data_object["id"]),
        now=context.now,
        event_id=context.event_id,
    )


@handles("charge.refund.updated", why="a refund's status changed (pending -> succeeded, failed)")
def refund_updated(context: EventContext) -> None:
    """Mirror the refunds of the charge the updated refund belongs to (a refund Stripe does not
    know is acknowledged, not retried)."""
    try:
        refund = context.gateway.retrieve_refund(str(context.data_object["id"]))
    except StripeObjectNotFoundError:
        return
    if refund.charge_id is not None:
        stripe_mirror.sync_charge_refunds(
            context.session,
            context.gateway,
            refund.charge_id,
            now=context.now,
            event_id=context.event_id,
        )


@handles("charge.dispute.created", why="a chargeback was opened: finance must answer it")
@handles("charge.dispute.updated", why="evidence or status of a chargeback changed")
@handles("charge.dispute.closed", why="a chargeback was won or lost")
def dispute_changed(context: EventContext) -> None:
    """Mirror the dispute (real Stripe only: localstripe has none)."""
    stripe_mirror.sync_dispute(
        context.session,
        context.gateway,
        str(context.data_object["id"]),
        now=context.now,
        event_id=context.event_id,
    )
