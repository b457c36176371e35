"""Invoice events: mirror the invoice and, through it, its subscription."""

from __future__ import annotations

from billing.services import stripe_mirror
from webhooks.registry import EventContext, handles


@handles("invoice.created", why="a new invoice (renewal, plan switch): mirror it for the reports")
@handles("invoice.finalized", why="the invoice got its number and PDF: mirror them")
@handles("invoice.paid", why="paid (also out of band): access continues, revenue counts")
@handles(
    "invoice.payment_succeeded",
    why="a payment went through: the subscription starts, renews or recovers from past due",
)
@handles(
    "invoice.payment_failed",
    why="a payment failed: the subscription goes past due, which mails the reader to fix the card",
)
@handles(
    "invoice.payment_action_required",
    why="the bank wants 3-D Secure for a renewal: past due, the reader is mailed to confirm it",
)
@handles("invoice.voided", why="the invoice was cancelled: it no longer counts as revenue")
@handles("invoice.marked_uncollectible", why="written off: dunning gave up on it")
def invoice_changed(context: EventContext) -> None:
    """Mirror the invoice and its subscription as Stripe has them now.

    The subscription is re-synced too: its status follows its invoices' payments, and localstripe
    sends no ``customer.subscription.updated`` when a payment fails or recovers. A subscription
    turning past due mails its reader (see ``stripe_mirror.mail_payment_problem``), once per failure
    whichever of these events reports it.
    """
    stripe_mirror.sync_invoice(
        context.session,
        context.gateway,
        str(context.data_object["id"]),
        now=context.now,
        event_id=context.event_id,
    )
