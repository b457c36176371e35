"""Stripe webhook handlers: one small module per event family.

Importing this package fills :data:`webhooks.registry.HANDLERS`; each handler is registered with
``@handles("type", why="...")``, the one-line reason we listen. Every handler treats its event as
a trigger: it takes only the object's id from the payload (localstripe's payloads are old
snapshots), re-fetches the object through :mod:`billing.services.stripe_mirror` and upserts the
mirror under a row lock, so delivery order and repetition do not matter.
"""

from webhooks.handlers import charges, customers, invoices, subscriptions

__all__ = ["charges", "customers", "invoices", "subscriptions"]
