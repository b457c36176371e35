"""Invoices sent to be paid by bank transfer, added to localstripe the way Stripe documents them.

localstripe only charges subscriptions automatically. Organisations pay by invoice, so the
stand-in learns, following Stripe's API reference:

- ``POST /v1/subscriptions`` with ``collection_method=send_invoice`` and ``days_until_due``
  (required with ``send_invoice``, refused without it; ``payment_settings`` accepted): the
  subscription is ``active`` at once, and its first invoice is finalized and left ``open`` with a
  ``due_date`` ``days_until_due`` days after it, with ``collection_method=send_invoice``; Stripe
  mails it (``invoice.finalized``, ``invoice.sent``), nothing is charged.
- ``POST /v1/test_helpers/customers/{id}/fund_cash_balance`` (``amount``, ``currency``,
  ``reference``): a bank transfer arrives in the customer's cash balance and is applied to their
  open invoices, the one whose number or id is the ``reference`` first, then the oldest; an
  invoice the balance covers becomes ``paid`` (``invoice.paid``, ``invoice.payment_succeeded``)
  and a ``past_due`` subscription it belongs to ``active`` again.
- Time: once an invoice sent this way is past its ``due_date`` unpaid, its subscription reads
  ``past_due`` (Stripe moves it there when the due date passes), and ``active`` again once paid.

:func:`install` patches the loaded ``localstripe.resources`` and adds the route to its server.
"""

from __future__ import annotations

import time
from typing import Any

SEND_INVOICE = "send_invoice"
CHARGE_AUTOMATICALLY = "charge_automatically"


def install(resources: Any, server: Any) -> None:
    """Teach the localstripe in ``resources`` / ``server`` to send invoices and take transfers."""
    subscription_cls, invoice_cls, customer_cls = (
        resources.Subscription,
        resources.Invoice,
        resources.Customer,
    )
    UserError = resources.UserError
    Event = resources.Event
    schedule_webhook = resources.schedule_webhook
    to_int = resources.try_convert_to_int

    original_init = subscription_cls.__init__
    original_create_invoice = subscription_cls._create_invoice
    original_status = invoice_cls.status

    def subscription_init(
        self: Any,
        *args: Any,
        collection_method: str | None = None,
        days_until_due: Any = None,
        payment_settings: Any = None,
        **kwargs: Any,
    ) -> None:
        method = collection_method or CHARGE_AUTOMATICALLY
        if method not in (CHARGE_AUTOMATICALLY, SEND_INVOICE):
            raise UserError(400, "Invalid collection_method")
        days = to_int(days_until_due) if days_until_due is not None else None
        if method == SEND_INVOICE:
            if type(days) is not int or days < 0:
                raise UserError(400, "days_until_due is required with send_invoice")
        elif days is not None:
            raise UserError(400, "days_until_due can only be set with send_invoice")
        if payment_settings is not None and type(payment_settings) is not dict:
            raise UserError(400, "Invalid payment_settings")
        self.collection_method = method
        self.days_until_due = days
        self.payment_settings = payment_settings
        original_init(self, *args, **kwargs)

    def create_invoice(self: Any) -> None:
        if getattr(self, "collection_method", CHARGE_AUTOMATICALLY) != SEND_INVOICE:
            original_create_invoice(self)
            return
        pending = [
            item
            for item in resources.InvoiceItem._api_list_all(
                None, customer=self.customer, limit=99
            )._list
            if item.invoice is None
        ]
        pending.extend(self.items._list)
        invoice = invoice_cls(
            customer=self.customer,
            subscription=self.id,
            items=pending,
            tax_percent=self.tax_percent,
            default_tax_rates=[rate.id for rate in (self.default_tax_rates or [])],
            date=self.current_period_start,
        )
        invoice.collection_method = SEND_INVOICE
        invoice.due_date = invoice.date + self.days_until_due * 86400
        invoice.payment_settings = self.payment_settings
        invoice.attempted = False
        invoice.attempt_count = 0
        invoice._finalize()
        self.status = "active"
        schedule_webhook(Event("invoice.finalized", invoice))
        schedule_webhook(Event("invoice.sent", invoice))

    def subscription_status(self: Any) -> str:
        stored = str(self.__dict__.get("_tollgate_status", self.__dict__.get("status")))
        if stored != "active" or getattr(self, "collection_method", "") != SEND_INVOICE:
            return stored
        latest = self.__dict__.get("latest_invoice")
        if latest is None:
            return stored
        invoice = invoice_cls._api_retrieve(latest)
        due = getattr(invoice, "due_date", None)
        if invoice.status == "open" and due is not None and time.time() > due:
            return "past_due"
        return stored

    def set_subscription_status(self: Any, value: str) -> None:
        self.__dict__.pop("status", None)
        self.__dict__["_tollgate_status"] = value

    def status(self: Any) -> str:
        if getattr(self, "_tollgate_paid_at", None) is not None:
            return "paid"
        return str(original_status.fget(self))

    def mark_paid(invoice: Any) -> None:
        invoice._draft = False
        invoice._tollgate_paid_at = int(time.time())
        invoice.status_transitions["paid_at"] = invoice._tollgate_paid_at
        schedule_webhook(Event("invoice.paid", invoice))
        schedule_webhook(Event("invoice.payment_succeeded", invoice))
        if invoice.subscription:
            subscription = subscription_cls._api_retrieve(invoice.subscription)
            if subscription.status in ("past_due", "unpaid", "incomplete"):
                subscription.status = "active"

    class CashBalanceTransaction(resources.StripeObject):  # type: ignore[misc]
        object = "customer_cash_balance_transaction"
        _id_prefix = "ccsbtxn_"

        def __init__(self, customer: str, amount: int, currency: str, reference: str) -> None:
            super().__init__()
            self.customer = customer
            self.type = "funded"
            self.net_amount = amount
            self.currency = currency
            self.funded = {"bank_transfer": {"reference": reference, "type": "eu_bank_transfer"}}

    def fund_cash_balance(
        id: str, amount: Any = None, currency: Any = None, reference: Any = None, **kwargs: Any
    ) -> Any:
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs))
        value = to_int(amount)
        if type(value) is not int or value <= 0:
            raise UserError(400, "amount must be a positive integer")
        if type(currency) is not str or len(currency) != 3:
            raise UserError(400, "currency is required")
        customer = customer_cls._api_retrieve(id)
        balance = getattr(customer, "_tollgate_cash", {})
        balance[currency] = balance.get(currency, 0) + value
        open_invoices = sorted(
            (
                invoice
                for invoice in invoice_cls._api_list_all(None, customer=id, limit=99)._list
                if invoice.status == "open"
                and invoice.currency == currency
                and getattr(invoice, "collection_method", "") == SEND_INVOICE
            ),
            key=lambda invoice: (
                reference not in (invoice.id, getattr(invoice, "number", None)),
                invoice.date,
            ),
        )
        for invoice in open_invoices:
            if balance[currency] < invoice.amount_due:
                break
            balance[currency] -= invoice.amount_due
            mark_paid(invoice)
        customer._tollgate_cash = balance
        return CashBalanceTransaction(id, value, currency, str(reference or ""))

    CashBalanceTransaction.__qualname__ = CashBalanceTransaction.__name__
    globals()["CashBalanceTransaction"] = CashBalanceTransaction  # picklable by name
    subscription_cls.status = property(subscription_status, set_subscription_status)
    subscription_cls.__init__ = subscription_init
    subscription_cls._create_invoice = create_invoice
    invoice_cls.status = property(status)
    url = "/v1/test_helpers/customers/{id}/fund_cash_balance"
    server.app.router.add_route("POST", url, server.api_extra(fund_cash_balance, url))
