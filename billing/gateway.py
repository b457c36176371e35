"""StripeGateway: the only code that talks to Stripe (or to localstripe, its stand-in).

Everything else in Tollgate calls this module and gets plain, typed dataclasses back: no other module
imports ``stripe`` or needs to know which server answers. Money stays integer minor units plus an ISO
currency (lower case, as Stripe gives it); times are timezone-aware UTC datetimes.

**Construction.** The gateway is injected: ``StripeGateway(client, api_base=...)`` takes a
``stripe.StripeClient``; ``StripeGateway.from_config(app.config)`` builds one from
``STRIPE_SECRET_KEY`` and ``STRIPE_API_BASE``. Nothing is configured at import time and there is no
module-level ``stripe.api_key``. stripe-python itself is imported on the first call to Stripe (its
types only for the type checker), so a process that never calls Stripe never loads it. The API version is pinned in :data:`STRIPE_API_VERSION`.

**Ours or not.** Every object the gateway creates carries ``metadata.tollgate_app = "tollgate"``
plus specific ``tollgate_*`` keys (``tollgate_reader_id``, ``tollgate_group_id``, ``tollgate_plan``,
...), so objects of other products on the same Stripe account can be ignored with :func:`is_ours`.
Invoices and charges that Stripe creates itself inherit the ``tollgate_*`` keys of the subscription
or customer they bill (see :class:`StripeInvoiceData`).

**The free trial stays ours.** A reader's 14-day trial is card-less and lives in our database; Stripe
never sees a trial (localstripe has none: its subscriptions are never ``trialing``). When a reader
subscribes during the trial, the gateway saves the card at once (:meth:`StripeGateway.
create_setup_intent`, Stripe.js ``confirmCardSetup`` in the browser, then
:meth:`StripeGateway.attach_default_payment_method` makes it the customer's default), and the
subscription itself is created only when our trial ends (by the ``tick`` command, with
:meth:`StripeGateway.create_subscription`). So nobody is charged before the free days they were
promised, and the reader sees the same behaviour on real Stripe and on localstripe.

**Two servers, one adapter.** Every difference between real Stripe and localstripe lives in
:class:`_StripeDialect` / :class:`_LocalstripeDialect`, chosen from the API base (``api.stripe.com``
is Stripe, anything else localstripe) or forced with ``server=``. The differences, each checked
against localstripe 1.15.10 with stripe-python 16.1.0, are listed in :class:`_LocalstripeDialect`.
"""

from __future__ import annotations

import functools
import itertools
import sys
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, ParamSpec, TypeGuard, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import stripe
    from stripe.params import (
        CustomerCreateParams,
        CustomerUpdateParams,
        InvoiceCreatePreviewParamsSubscriptionDetails,
        InvoiceListParams,
        PlanCreateParams,
        PlanListParams,
        PriceCreateParams,
        PriceListParams,
        ProductCreateParams,
        RefundCreateParams,
        RefundListParams,
        SetupIntentCreateParams,
        SubscriptionCreateParams,
        SubscriptionCreateParamsItem,
        SubscriptionListParams,
        SubscriptionUpdateParams,
        SubscriptionUpdateParamsItem,
    )


STRIPE_API_VERSION: Final = "2026-10-28.endive"
"""The Stripe API version every request asks for: the one stripe-python 16.1.0 is generated for."""

STRIPE_API_BASE: Final = "https://api.stripe.com"
"""Real Stripe's API base."""

LOCALSTRIPE_API_BASE: Final = "http://127.0.0.1:8420"
"""Where the development localstripe listens unless ``STRIPE_API_BASE`` says otherwise."""

APP_TAG: Final = "tollgate"
"""The value of ``metadata.tollgate_app`` on everything Tollgate creates."""

METADATA_PREFIX: Final = "tollgate_"
"""Every metadata key Tollgate writes starts with this."""

Server = Literal["stripe", "localstripe"]
Interval = Literal["day", "week", "month", "year"]
CollectionMethod = Literal["charge_automatically", "send_invoice"]
RefundReason = Literal["duplicate", "fraudulent", "requested_by_customer"]
PaymentMethodType = Literal["card", "sepa_debit"]
TaxExempt = Literal["none", "exempt", "reverse"]
"""A customer's ``tax_exempt`` as Stripe documents it: ``reverse`` for an EU business taxed by
reverse charge (Stripe then prints "Reverse charge" on its invoice and receipt PDFs), ``none``
otherwise (``exempt`` exists on Stripe; Tollgate never uses it)."""

_Raw = dict[str, Any]
_P = ParamSpec("_P")
_R = TypeVar("_R")


# --- errors -------------------------------------------------------------------------------------


class GatewayError(Exception):
    """Stripe refused a request or could not be reached; ``message`` says why."""

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status


class PaymentDeclinedError(GatewayError):
    """A card or debit was declined (or needs an authentication the customer has not given)."""


class StripeObjectNotFoundError(GatewayError):
    """The object asked for does not exist on the server."""


class GatewayUnavailableError(GatewayError):
    """The server could not be reached, or failed on its side; trying again later may work."""


class UnsupportedByServerError(GatewayError):
    """The operation exists on real Stripe but not on the server in use (localstripe)."""


def _translate(exc: stripe.StripeError) -> GatewayError:
    import stripe

    message = exc.user_message or str(exc) or type(exc).__name__
    code = exc.code
    status = exc.http_status
    if isinstance(exc, stripe.CardError) or status == 402:
        return PaymentDeclinedError(message, code=code, http_status=status)
    if isinstance(exc, stripe.APIConnectionError):
        return GatewayUnavailableError(message, code=code, http_status=status)
    if status == 404:
        return StripeObjectNotFoundError(message, code=code, http_status=status)
    if status is not None and (status == 429 or status >= 500):
        return GatewayUnavailableError(message, code=code, http_status=status)
    return GatewayError(message, code=code, http_status=status)


def _is_stripe_error(exc: BaseException) -> TypeGuard[stripe.StripeError]:
    """Whether ``exc`` is stripe-python's (never when stripe-python was not even imported yet)."""
    sdk = sys.modules.get("stripe")
    return sdk is not None and isinstance(exc, sdk.StripeError)


def _translating(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn stripe-python's exceptions into the gateway's, so callers never see ``stripe.*``."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if _is_stripe_error(exc):
                raise _translate(exc) from exc
            raise

    return wrapper


# --- what the gateway returns -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StripeProductData:
    """A Stripe product (what is sold: the digital subscription)."""

    id: str
    name: str
    active: bool
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StripePriceData:
    """A recurring price of a product (a Stripe Price; a Plan on localstripe, same id space)."""

    id: str
    product_id: str
    amount: int
    currency: str
    interval: str
    interval_count: int
    active: bool
    nickname: str | None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StripeCustomerData:
    """A Stripe customer; ``deleted`` is True for a customer deleted on Stripe's side."""

    id: str
    email: str | None
    name: str | None
    country: str | None
    default_payment_method_id: str | None
    created: datetime | None
    deleted: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    balance: int = 0
    """Stripe's ``balance``, in minor units: negative is a credit the next invoices use first."""
    tax_exempt: str = "none"
    """Stripe's ``tax_exempt``: ``none``, ``exempt`` or ``reverse`` (see :data:`TaxExempt`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CardData:
    """A saved payment method as shown to the reader: brand and last four digits.

    ``type`` is ``card`` or ``sepa_debit``; a SEPA debit has no brand or expiry, and ``last4`` is
    the IBAN's.
    """

    payment_method_id: str
    type: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    country: str | None = None
    """The card's issuing country (the IBAN's for SEPA): evidence of where the customer is."""


class SetupIntentSecret(NamedTuple):
    """A new SetupIntent: its id, and the client secret Stripe.js confirms it with in the browser."""

    id: str
    client_secret: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SetupIntentData:
    """Where a SetupIntent stands: ``succeeded`` once the card was saved (authentication included)."""

    id: str
    status: str
    customer_id: str | None
    payment_method_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StripeSubscriptionData:
    """A Stripe subscription with one item (one price, ``quantity`` seats).

    ``status`` is Stripe's string verbatim (``active``, ``past_due``, ``incomplete``, ...).
    """

    id: str
    customer_id: str
    status: str
    price_id: str
    item_id: str
    quantity: int
    current_period_start: datetime
    current_period_end: datetime
    cancel_at_period_end: bool
    cancel_at: datetime | None
    canceled_at: datetime | None
    ended_at: datetime | None
    trial_end: datetime | None
    collection_method: str
    latest_invoice_id: str | None
    created: datetime
    metadata: dict[str, str] = field(default_factory=dict)
    tax_rate_ids: tuple[str, ...] = ()
    """The subscription's ``default_tax_rates``: what its next invoices are taxed at."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StripeInvoiceData:
    """A Stripe invoice with what the mirror and the VAT and revenue reports need.

    ``metadata`` is the invoice's own, completed with the ``tollgate_*`` keys of the subscription
    and the customer it bills (Stripe does not copy them onto the invoices it creates), so that
    :func:`is_ours` answers for invoices too. ``tax`` is the sum of the invoice's taxes.
    """

    id: str
    number: str | None
    customer_id: str
    subscription_id: str | None
    status: str
    currency: str
    subtotal: int
    tax: int
    total: int
    amount_due: int
    amount_paid: int
    created: datetime
    paid_at: datetime | None
    period_start: datetime | None
    period_end: datetime | None
    billing_reason: str | None
    collection_method: str
    attempt_count: int
    next_payment_attempt: datetime | None
    hosted_invoice_url: str | None
    invoice_pdf_url: str | None
    customer_country: str | None
    customer_vat_id: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    tax_rate_ids: tuple[str, ...] = ()
    """The Tax Rates the invoice's ``tax`` was computed with."""
    total_excluding_tax: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InvoicePreviewData:
    """What a subscription's next invoice will be, as Stripe previews it (nothing is stored)."""

    currency: str
    subtotal: int
    tax: int
    total: int
    tax_rate_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StripeTaxRateData:
    """A Stripe Tax Rate: ``percentage`` of VAT, included in the price when ``inclusive``."""

    id: str
    display_name: str
    percentage: Decimal
    inclusive: bool
    active: bool
    country: str | None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceChangePreviewData:
    """What a change would invoice at once (Stripe's invoice preview, ``create_preview``).

    ``total`` is the invoice's lines with tax, before the customer's credit (negative when the
    unused time of the old price is worth more than the new one); ``amount_due`` is what would be
    charged now, after that credit.
    """

    currency: str
    total: int
    amount_due: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QuantityChangePreviewData:
    """What a change of quantity would add to the next invoice (Stripe's invoice preview with
    ``proration_date``): the proration lines of that moment only, net and the tax on top."""

    currency: str
    net: int
    tax: int
    proration_date: datetime

    @property
    def total(self) -> int:
        """Net plus tax: what the change costs (negative: a credit)."""
        return self.net + self.tax


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentIntentData:
    """The payment of an invoice: ``requires_action`` means the customer must authenticate (3DS)
    in the browser with ``client_secret``; ``requires_payment_method`` means it failed."""

    id: str
    status: str
    amount: int
    currency: str
    client_secret: str | None
    payment_method_id: str | None
    last_error_code: str | None
    last_error_message: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StripeChargeData:
    """A charge (the money movement of a payment), with the invoice it paid when there is one."""

    id: str
    amount: int
    amount_refunded: int
    refunded: bool
    currency: str
    status: str
    customer_id: str | None
    payment_intent_id: str | None
    invoice_id: str | None
    disputed: bool
    failure_code: str | None
    failure_message: str | None
    created: datetime
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StripeRefundData:
    """Money given back against a charge."""

    id: str
    amount: int
    currency: str
    status: str
    charge_id: str | None
    payment_intent_id: str | None
    reason: str | None
    created: datetime
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StripeDisputeData:
    """A chargeback opened by the cardholder's bank against a charge."""

    id: str
    amount: int
    currency: str
    status: str
    reason: str | None
    charge_id: str | None
    payment_intent_id: str | None
    created: datetime
    metadata: dict[str, str] = field(default_factory=dict)


def is_ours(obj: Any) -> bool:
    """True when ``obj`` was made by Tollgate: its metadata has ``tollgate_app = "tollgate"``.

    ``obj`` is any of the gateway's dataclasses, or a raw Stripe object as a mapping (for example
    ``event["data"]["object"]`` of a webhook); objects without metadata are not ours.
    """
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else getattr(obj, "metadata", None)
    return isinstance(metadata, Mapping) and metadata.get("tollgate_app") == APP_TAG


# --- reading raw Stripe objects -----------------------------------------------------------------


def _get(raw: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(raw, Mapping):
            return None
        raw = raw.get(key)
    return raw


def _str(raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise GatewayError(f"Stripe object has no text field {key!r}")
    return value


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _time(value: Any) -> datetime:
    stamp = _opt_int(value)
    if stamp is None:
        raise GatewayError(f"Stripe object has no timestamp where one was expected: {value!r}")
    return datetime.fromtimestamp(stamp, tz=UTC)


def _opt_time(value: Any) -> datetime | None:
    stamp = _opt_int(value)
    return None if stamp is None else datetime.fromtimestamp(stamp, tz=UTC)


def _id_of(value: Any) -> str | None:
    """The id of an expandable field: a plain id, or the expanded object's ``id``."""
    if isinstance(value, str):
        return value
    return _opt_str(_get(value, "id"))


def _metadata(*sources: Any) -> dict[str, str]:
    """The first source's metadata, completed with the ``tollgate_*`` keys of the others."""
    result: dict[str, str] = {}
    for index, source in enumerate(sources):
        if not isinstance(source, Mapping):
            continue
        for key, value in source.items():
            if not isinstance(key, str) or not isinstance(value, str):
                continue
            if (index == 0 or key.startswith(METADATA_PREFIX)) and key not in result:
                result[key] = value
    return result


def _tag(extra: Mapping[str, str | int] | None = None) -> dict[str, str]:
    """Our metadata: ``tollgate_app`` plus the given ``tollgate_*`` keys (values as text)."""
    tags = {"tollgate_app": APP_TAG}
    for key, value in (extra or {}).items():
        if not key.startswith(METADATA_PREFIX):
            raise ValueError(f"metadata key {key!r} must start with {METADATA_PREFIX!r}")
        tags[key] = str(value)
    return tags


# --- the two servers ----------------------------------------------------------------------------


class _Dialect(ABC):
    """What differs between the servers; the gateway asks its dialect and nothing else does."""

    server: Server

    @abstractmethod
    def create_price(
        self,
        client: stripe.StripeClient,
        *,
        product_id: str,
        amount: int,
        currency: str,
        interval: Interval,
        nickname: str | None,
        metadata: dict[str, str],
    ) -> _Raw:
        """Create a recurring price of ``amount`` minor units per ``interval``."""

    @abstractmethod
    def retrieve_price(self, client: stripe.StripeClient, price_id: str) -> _Raw:
        """Fetch one price."""

    @abstractmethod
    def list_prices(self, client: stripe.StripeClient, *, active_only: bool) -> Iterator[_Raw]:
        """All prices, newest first."""

    @abstractmethod
    def price_terms(self, raw: _Raw) -> tuple[int, str, int]:
        """(amount, interval, interval_count) of a raw price."""

    @abstractmethod
    def new_item(self, price_id: str, quantity: int) -> SubscriptionCreateParamsItem:
        """The one item of a new subscription."""

    @abstractmethod
    def changed_item(
        self, item_id: str, price_id: str | None, quantity: int
    ) -> SubscriptionUpdateParamsItem:
        """The item update that moves a subscription to a price and/or a quantity."""

    @abstractmethod
    def add_create_options(
        self,
        params: SubscriptionCreateParams,
        *,
        collection_method: CollectionMethod,
        days_until_due: int | None,
    ) -> None:
        """Add the server-specific options of a new subscription to ``params``."""

    @abstractmethod
    def item_price_id(self, raw_item: _Raw) -> str:
        """The price id of a raw subscription item."""

    @abstractmethod
    def subscription_period(self, raw: _Raw) -> tuple[datetime, datetime]:
        """The current period (start, end) of a raw subscription."""

    @abstractmethod
    def canceled_at(self, raw: _Raw) -> datetime | None:
        """When a raw subscription was cancelled."""

    @abstractmethod
    def invoice_tax(self, raw: _Raw) -> int:
        """The total tax of a raw invoice, in minor units."""

    @abstractmethod
    def invoice_total_before_credit(self, raw: _Raw) -> int:
        """A raw invoice's lines with tax, before the customer's credit is applied."""

    @abstractmethod
    def proration_line(self, raw_line: _Raw) -> tuple[int, int] | None:
        """(net amount, tax added on top) of a raw invoice line that is a proration; None for
        any other line."""

    @abstractmethod
    def invoice_payment_intent_id(self, client: stripe.StripeClient, raw: _Raw) -> str | None:
        """The PaymentIntent paying a raw invoice (the paid one if any, else the latest)."""

    @abstractmethod
    def invoice_id_for_payment_intent(
        self, client: stripe.StripeClient, payment_intent_id: str
    ) -> str | None:
        """The invoice a PaymentIntent pays, if any."""

    @abstractmethod
    def add_setup_intent_types(
        self, params: SetupIntentCreateParams, types: Sequence[PaymentMethodType]
    ) -> None:
        """Say which payment method types a new SetupIntent accepts."""

    @abstractmethod
    def add_refund_reason(
        self, params: RefundCreateParams, reason: RefundReason, metadata: dict[str, str]
    ) -> None:
        """Record why a refund is made."""

    @abstractmethod
    def refund_reason(self, raw: _Raw) -> str | None:
        """Why a raw refund was made."""

    @abstractmethod
    def retrieve_dispute(self, client: stripe.StripeClient, dispute_id: str) -> _Raw:
        """Fetch one dispute, with its charge and the charge's customer expanded."""

    @abstractmethod
    def register_webhook(self, api_base: str, url: str, secret: str) -> bool:
        """Point the server's webhooks at ``url``, signed with ``secret``; False if not possible."""

    @abstractmethod
    def add_tax_rate_country(self, params: dict[str, Any], country: str) -> None:
        """Say which country a new VAT Tax Rate is for."""

    @abstractmethod
    def tax_rate_country(self, raw: _Raw) -> str | None:
        """The country of a raw Tax Rate."""

    @abstractmethod
    def invoice_tax_rate_ids(self, raw: _Raw) -> tuple[str, ...]:
        """The Tax Rates a raw invoice's taxes were computed with."""


class _StripeDialect(_Dialect):
    """Real Stripe, current API (``STRIPE_API_VERSION``)."""

    server: Server = "stripe"

    def create_price(
        self,
        client: stripe.StripeClient,
        *,
        product_id: str,
        amount: int,
        currency: str,
        interval: Interval,
        nickname: str | None,
        metadata: dict[str, str],
    ) -> _Raw:
        """Create a Price, VAT included in its amount (``tax_behavior=inclusive``)."""
        params: PriceCreateParams = {
            "product": product_id,
            "unit_amount": amount,
            "currency": currency,
            "recurring": {"interval": interval},
            "tax_behavior": "inclusive",
            "metadata": metadata,
        }
        if nickname is not None:
            params["nickname"] = nickname
        return client.v1.prices.create(params).to_dict()

    def retrieve_price(self, client: stripe.StripeClient, price_id: str) -> _Raw:
        """Fetch a Price."""
        return client.v1.prices.retrieve(price_id).to_dict()

    def list_prices(self, client: stripe.StripeClient, *, active_only: bool) -> Iterator[_Raw]:
        """List Prices, following pages."""
        params: PriceListParams = {"active": True} if active_only else {}
        for price in client.v1.prices.list(params).auto_paging_iter():
            yield price.to_dict()

    def price_terms(self, raw: _Raw) -> tuple[int, str, int]:
        """Amount from ``unit_amount``, interval from ``recurring``."""
        return (
            _int(raw.get("unit_amount")),
            _opt_str(_get(raw, "recurring", "interval")) or "",
            _int(_get(raw, "recurring", "interval_count"), 1),
        )

    def new_item(self, price_id: str, quantity: int) -> SubscriptionCreateParamsItem:
        """Items take ``price``."""
        return {"price": price_id, "quantity": quantity}

    def changed_item(
        self, item_id: str, price_id: str | None, quantity: int
    ) -> SubscriptionUpdateParamsItem:
        """Items take ``price``."""
        item: SubscriptionUpdateParamsItem = {"id": item_id, "quantity": quantity}
        if price_id is not None:
            item["price"] = price_id
        return item

    def add_create_options(
        self,
        params: SubscriptionCreateParams,
        *,
        collection_method: CollectionMethod,
        days_until_due: int | None,
    ) -> None:
        """``off_session``: subscriptions start from ``tick``, without the reader present."""
        params["off_session"] = True
        params["collection_method"] = collection_method
        if collection_method == "send_invoice":
            params["days_until_due"] = days_until_due if days_until_due is not None else 30
            params["payment_settings"] = {
                "payment_method_types": ["customer_balance"],
                "payment_method_options": {
                    "customer_balance": {
                        "funding_type": "bank_transfer",
                        "bank_transfer": {"type": "eu_bank_transfer"},
                    }
                },
            }

    def item_price_id(self, raw_item: _Raw) -> str:
        """``item.price.id``."""
        return _id_of(raw_item.get("price")) or ""

    def subscription_period(self, raw: _Raw) -> tuple[datetime, datetime]:
        """Since API 2025-03-31 the period lives on the items."""
        item = (_get(raw, "items", "data") or [{}])[0]
        start = item.get("current_period_start", raw.get("current_period_start"))
        end = item.get("current_period_end", raw.get("current_period_end"))
        return _time(start), _time(end)

    def canceled_at(self, raw: _Raw) -> datetime | None:
        """``canceled_at`` as Stripe sets it."""
        return _opt_time(raw.get("canceled_at"))

    def invoice_tax(self, raw: _Raw) -> int:
        """The sum of ``total_taxes``."""
        return sum(_int(_get(tax, "amount")) for tax in raw.get("total_taxes") or [])

    def invoice_total_before_credit(self, raw: _Raw) -> int:
        """Stripe's ``total`` (the customer balance is applied after it, into ``amount_due``)."""
        return _int(raw.get("total"))

    def proration_line(self, raw_line: _Raw) -> tuple[int, int] | None:
        """Lines whose ``parent.subscription_item_details.proration`` is true (or, for an
        invoice item, ``parent.invoice_item_details.proration``), taxed by their exclusive
        ``taxes``."""
        parent = raw_line.get("parent") or {}
        details = parent.get("subscription_item_details") or parent.get("invoice_item_details")
        if not (details or {}).get("proration"):
            return None
        taxes = raw_line.get("taxes") or []
        on_top = sum(_int(t.get("amount")) for t in taxes if t.get("tax_behavior") != "inclusive")
        return _int(raw_line.get("amount")), on_top

    def invoice_payment_intent_id(self, client: stripe.StripeClient, raw: _Raw) -> str | None:
        """Through the invoice's InvoicePayments (invoices lost ``payment_intent`` in 2025)."""
        payments = client.v1.invoice_payments.list({"invoice": _str(raw, "id"), "limit": 20})
        found = [payment.to_dict() for payment in payments.data]
        found.sort(
            key=lambda payment: (payment.get("status") == "paid", _int(payment.get("created")))
        )
        for payment in reversed(found):
            intent = _id_of(_get(payment, "payment", "payment_intent"))
            if intent is not None:
                return intent
        return None

    def invoice_id_for_payment_intent(
        self, client: stripe.StripeClient, payment_intent_id: str
    ) -> str | None:
        """Through InvoicePayments (charges and PaymentIntents lost ``invoice`` in 2025)."""
        payments = client.v1.invoice_payments.list(
            {"payment": {"type": "payment_intent", "payment_intent": payment_intent_id}, "limit": 1}
        )
        for payment in payments.data:
            return _id_of(payment.to_dict().get("invoice"))
        return None

    def add_setup_intent_types(
        self, params: SetupIntentCreateParams, types: Sequence[PaymentMethodType]
    ) -> None:
        """``allowed_payment_method_types`` in the current API."""
        params["allowed_payment_method_types"] = list(types)

    def add_refund_reason(
        self, params: RefundCreateParams, reason: RefundReason, metadata: dict[str, str]
    ) -> None:
        """Stripe's own ``reason``."""
        params["reason"] = reason

    def refund_reason(self, raw: _Raw) -> str | None:
        """Stripe's own ``reason``."""
        return _opt_str(raw.get("reason"))

    def retrieve_dispute(self, client: stripe.StripeClient, dispute_id: str) -> _Raw:
        """``GET /v1/disputes/<id>``."""
        return client.v1.disputes.retrieve(dispute_id, {"expand": ["charge.customer"]}).to_dict()

    def register_webhook(self, api_base: str, url: str, secret: str) -> bool:
        """Stripe's endpoints are set up in the Dashboard, with Stripe's own secret."""
        return False

    def add_tax_rate_country(self, params: dict[str, Any], country: str) -> None:
        """Stripe's own ``country`` and ``tax_type=vat``."""
        params["country"] = country
        params["tax_type"] = "vat"

    def tax_rate_country(self, raw: _Raw) -> str | None:
        """Stripe's own ``country``."""
        return _opt_str(raw.get("country"))

    def invoice_tax_rate_ids(self, raw: _Raw) -> tuple[str, ...]:
        """``total_taxes[].tax_rate_details.tax_rate`` (API 2025-03-31 and later)."""
        found = (
            _id_of(_get(tax, "tax_rate_details", "tax_rate"))
            for tax in raw.get("total_taxes") or []
        )
        return tuple(dict.fromkeys(rate for rate in found if rate))


class _LocalstripeDialect(_Dialect):
    """localstripe 1.15.10, as checked with stripe-python 16.1.0. Where it differs from Stripe:

    - It knows Plans, not Prices (``/v1/prices`` is 404), and subscription items take ``plan``.
      Its plans' amounts are ``amount``; prices' are ``unit_amount`` with ``recurring.interval``.
    - It refuses ``payment_behavior=default_incomplete``, ``default_payment_method``,
      ``collection_method`` and ``off_session`` on a new subscription (it charges the customer's
      ``invoice_settings.default_payment_method``, as Stripe does when none is given);
      ``billing.devstripe`` adds ``collection_method=send_invoice`` with ``days_until_due`` and the
      ``fund_cash_balance`` test helper for bank transfers (``payment_settings`` is accepted and
      kept, no bank account details are made up). Updates with ``proration_behavior`` or ``payment_behavior``
      fail with 500, and an item update without ``quantity`` resets it to 1: the gateway sends
      neither option and always the quantity. Updating a subscription's metadata is ignored.
    - The current period is on the subscription (Stripe moved it to the items in 2025);
      ``canceled_at`` stays empty after a cancellation (``ended_at`` is set).
    - An invoice has ``payment_intent`` and ``tax`` (Stripe: InvoicePayments and ``total_taxes``),
      no ``number``, hosted URL or PDF; a PaymentIntent has ``invoice``; a charge's ``invoice`` is
      always empty. It shares Stripe's ``parent.subscription_details.subscription``.
    - SetupIntents take ``payment_method_types`` (Stripe's current API:
      ``allowed_payment_method_types``); confirming one does not attach the payment method to the
      customer, so :meth:`StripeGateway.attach_default_payment_method` attaches it afterwards.
    - Refunds take no ``reason`` (kept in ``metadata.tollgate_refund_reason`` instead).
    - Tax Rates take no ``country`` or ``tax_type`` (the country is kept in ``jurisdiction`` and
      ``metadata.tollgate_country``); an invoice's taxes are ``total_tax_amounts[].tax_rate``
      (Stripe: ``total_taxes[].tax_rate_details``). As released, localstripe adds every Tax
      Rate on top of the price, inclusive or not, and gives every card the country ``FR``:
      :func:`billing.devstripe.install_stripe_tax_behaviour` makes both behave as on Stripe.
    - No disputes, trials (status ``trialing`` never happens), Checkout, Billing Portal or test
      clocks.
    - Proration is crude: a price or quantity change adds "Unused time" items worth minus every
      earlier invoice of the subscription, whatever ``proration_date`` says; a change of interval
      (monthly <-> yearly) invoices and charges at once, restarting the period. A change of
      quantity's preview needs the plan on every item. :mod:`billing.devstripe_prorations`
      makes a change of quantity and a change of interval prorate by the second at
      ``proration_date`` (the preview's too), as Stripe does.
    - Failing payments: card 4000000000000341 and SEPA IBAN DE62370400440532013001 are declined,
      card 4000008260003178 needs 3-D Secure (``POST /v1/payment_intents/<id>/_authenticate`` with
      ``client_secret`` and ``success``) and is declined even after it. A first invoice declined
      leaves the subscription ``incomplete``; a failed 3-D Secure or a declined SEPA debit (which
      fails half a second later) cancels it (``canceled``); a later invoice declined on a card
      makes it ``past_due``, and paying the invoice with a good card makes it ``active`` again.
    - Webhooks: registered with ``POST /_config/webhooks/<id>`` (form fields ``url``, ``secret``),
      signed like Stripe's, sent about one second after the call, never retried, with a snapshot
      of the object taken at the call. It never sends ``customer.subscription.updated``,
      ``invoice.paid``, ``customer.subscription.trial_will_end`` or ``charge.refunded``.
    - It re-saves its whole store to the fixed file ``/tmp/localstripe.pickle`` on every write and
      loads it at start unless started with ``--from-scratch``; ``DELETE /_config/data`` empties it.
    """

    server: Server = "localstripe"

    def create_price(
        self,
        client: stripe.StripeClient,
        *,
        product_id: str,
        amount: int,
        currency: str,
        interval: Interval,
        nickname: str | None,
        metadata: dict[str, str],
    ) -> _Raw:
        """Create a Plan."""
        params: PlanCreateParams = {
            "product": product_id,
            "amount": amount,
            "currency": currency,
            "interval": interval,
            "metadata": metadata,
        }
        if nickname is not None:
            params["nickname"] = nickname
        return client.v1.plans.create(params).to_dict()

    def retrieve_price(self, client: stripe.StripeClient, price_id: str) -> _Raw:
        """Fetch a Plan."""
        return client.v1.plans.retrieve(price_id).to_dict()

    def list_prices(self, client: stripe.StripeClient, *, active_only: bool) -> Iterator[_Raw]:
        """List Plans, following pages."""
        params: PlanListParams = {"active": True} if active_only else {}
        for plan in client.v1.plans.list(params).auto_paging_iter():
            yield plan.to_dict()

    def price_terms(self, raw: _Raw) -> tuple[int, str, int]:
        """A plan's own ``amount`` and ``interval``."""
        return (
            _int(raw.get("amount")),
            _opt_str(raw.get("interval")) or "",
            _int(raw.get("interval_count"), 1),
        )

    def new_item(self, price_id: str, quantity: int) -> SubscriptionCreateParamsItem:
        """Items take ``plan``."""
        return {"plan": price_id, "quantity": quantity}

    def changed_item(
        self, item_id: str, price_id: str | None, quantity: int
    ) -> SubscriptionUpdateParamsItem:
        """Items take ``plan``; the quantity is always sent (it would fall back to 1)."""
        item: SubscriptionUpdateParamsItem = {"id": item_id, "quantity": quantity}
        if price_id is not None:
            item["plan"] = price_id
        return item

    def add_create_options(
        self,
        params: SubscriptionCreateParams,
        *,
        collection_method: CollectionMethod,
        days_until_due: int | None,
    ) -> None:
        """Only ``send_invoice`` and its ``days_until_due``, which ``billing.devstripe`` adds to
        localstripe (it refuses the other options)."""
        if collection_method == "send_invoice":
            params["collection_method"] = collection_method
            params["days_until_due"] = days_until_due if days_until_due is not None else 30

    def item_price_id(self, raw_item: _Raw) -> str:
        """``item.plan.id``."""
        return _id_of(raw_item.get("plan")) or ""

    def subscription_period(self, raw: _Raw) -> tuple[datetime, datetime]:
        """The period is on the subscription itself."""
        return _time(raw.get("current_period_start")), _time(raw.get("current_period_end"))

    def canceled_at(self, raw: _Raw) -> datetime | None:
        """``canceled_at`` stays empty on cancellation, so the end stands in for it."""
        return _opt_time(raw.get("canceled_at")) or (
            _opt_time(raw.get("ended_at")) if raw.get("status") == "canceled" else None
        )

    def invoice_tax(self, raw: _Raw) -> int:
        """The invoice's ``tax``."""
        return _int(raw.get("tax"))

    def invoice_total_before_credit(self, raw: _Raw) -> int:
        """``subtotal`` plus the tax added on top of it: localstripe's ``total`` already has the
        credit taken off, and its ``tax`` counts inclusive taxes too, which (as on Stripe) are
        inside the subtotal already."""
        inclusive = sum(
            _int(t.get("amount")) for t in raw.get("total_tax_amounts") or [] if t.get("inclusive")
        )
        return _int(raw.get("subtotal")) + _int(raw.get("tax")) - inclusive

    def proration_line(self, raw_line: _Raw) -> tuple[int, int] | None:
        """Lines with ``proration`` true, taxed by their exclusive ``tax_amounts``."""
        if not raw_line.get("proration"):
            return None
        taxes = raw_line.get("tax_amounts") or []
        on_top = sum(_int(t.get("amount")) for t in taxes if not t.get("inclusive"))
        return _int(raw_line.get("amount")), on_top

    def invoice_payment_intent_id(self, client: stripe.StripeClient, raw: _Raw) -> str | None:
        """The invoice's own ``payment_intent``."""
        return _id_of(raw.get("payment_intent"))

    def invoice_id_for_payment_intent(
        self, client: stripe.StripeClient, payment_intent_id: str
    ) -> str | None:
        """The PaymentIntent's own ``invoice``."""
        intent = client.v1.payment_intents.retrieve(payment_intent_id).to_dict()
        return _id_of(intent.get("invoice"))

    def add_setup_intent_types(
        self, params: SetupIntentCreateParams, types: Sequence[PaymentMethodType]
    ) -> None:
        """Nothing: localstripe accepts any type on confirmation (its default list is card)."""

    def add_refund_reason(
        self, params: RefundCreateParams, reason: RefundReason, metadata: dict[str, str]
    ) -> None:
        """Kept in metadata: localstripe refuses ``reason``."""
        metadata["tollgate_refund_reason"] = reason

    def refund_reason(self, raw: _Raw) -> str | None:
        """Read back from metadata."""
        return _opt_str(_get(raw, "metadata", "tollgate_refund_reason"))

    def retrieve_dispute(self, client: stripe.StripeClient, dispute_id: str) -> _Raw:
        """localstripe has no disputes."""
        raise UnsupportedByServerError("localstripe has no disputes")

    def add_tax_rate_country(self, params: dict[str, Any], country: str) -> None:
        """localstripe refuses ``country`` and ``tax_type``: the country goes in ``jurisdiction``
        and ``metadata.tollgate_country``."""
        params["jurisdiction"] = country
        params["metadata"]["tollgate_country"] = country

    def tax_rate_country(self, raw: _Raw) -> str | None:
        """Read back from metadata."""
        return _opt_str(_get(raw, "metadata", "tollgate_country"))

    def invoice_tax_rate_ids(self, raw: _Raw) -> tuple[str, ...]:
        """localstripe's ``total_tax_amounts[].tax_rate``."""
        found = (_id_of(tax.get("tax_rate")) for tax in raw.get("total_tax_amounts") or [])
        return tuple(dict.fromkeys(rate for rate in found if rate))

    def register_webhook(self, api_base: str, url: str, secret: str) -> bool:
        """``POST /_config/webhooks/tollgate`` with ``url`` and ``secret``."""
        body = urllib.parse.urlencode({"url": url, "secret": secret}).encode()
        request = urllib.request.Request(  # noqa: S310 - the configured API base, http(s) only
            f"{api_base}/_config/webhooks/{APP_TAG}", data=body, method="POST"
        )
        if urlsplit(request.full_url).scheme not in {"http", "https"}:
            raise GatewayError(f"STRIPE_API_BASE must be an http(s) URL, got {api_base!r}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                status: int = response.status
                return 200 <= status < 300
        except (urllib.error.URLError, OSError) as exc:
            raise GatewayUnavailableError(
                f"localstripe did not register the webhook: {exc}"
            ) from exc


def _dialect_for(api_base: str, server: Server | None) -> _Dialect:
    if server is None:
        server = "stripe" if urlsplit(api_base).hostname == "api.stripe.com" else "localstripe"
    return _StripeDialect() if server == "stripe" else _LocalstripeDialect()


# --- the gateway --------------------------------------------------------------------------------


class StripeGateway:
    """Tollgate's calls to Stripe, over an injected ``stripe.StripeClient``.

    Every method returns the gateway's dataclasses and raises :class:`GatewayError` (or one of its
    subclasses), never stripe-python's types.
    """

    def __init__(
        self,
        client: stripe.StripeClient | Callable[[], stripe.StripeClient],
        *,
        api_base: str,
        server: Server | None = None,
    ) -> None:
        """Wrap ``client`` (or the client a function builds on the first call to Stripe), which
        talks to ``api_base``; ``server`` overrides the guess from it."""
        self._given = client
        self._api_base = api_base.rstrip("/")
        self._dialect = _dialect_for(self._api_base, server)

    @functools.cached_property
    def _client(self) -> stripe.StripeClient:
        """The client, built on first use when a function was given: stripe-python and its HTTP
        clients (about 30 MB) are imported only by a process that calls Stripe, not by every one
        that builds the app (the export command, the worker before its first event)."""
        given = self._given
        return given() if callable(given) else given

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StripeGateway:
        """A gateway for the settings ``STRIPE_SECRET_KEY`` (required) and ``STRIPE_API_BASE``
        (localstripe's :data:`LOCALSTRIPE_API_BASE` when absent); ``STRIPE_MAX_NETWORK_RETRIES``
        (default 2), ``STRIPE_CONNECT_TIMEOUT`` (2 s) and ``STRIPE_READ_TIMEOUT`` (5 s) are optional:
        a call that gets no connection or no answer in time fails as unavailable."""
        secret_key = str(config.get("STRIPE_SECRET_KEY") or "")
        if not secret_key:
            raise ValueError("STRIPE_SECRET_KEY is not set")
        api_base = str(config.get("STRIPE_API_BASE") or LOCALSTRIPE_API_BASE).rstrip("/")
        timeouts = (
            float(config.get("STRIPE_CONNECT_TIMEOUT", 2)),
            float(config.get("STRIPE_READ_TIMEOUT", 5)),
        )
        retries = int(config.get("STRIPE_MAX_NETWORK_RETRIES", 2))

        def connect() -> stripe.StripeClient:
            import stripe

            return stripe.StripeClient(
                secret_key,
                base_addresses={"api": api_base},
                stripe_version=STRIPE_API_VERSION,
                max_network_retries=retries,
                http_client=stripe.RequestsClient(timeout=timeouts),
            )

        return cls(connect, api_base=api_base)

    @property
    def server(self) -> Server:
        """Which server answers: ``stripe`` or ``localstripe`` (for logs and the health page)."""
        return self._dialect.server

    @staticmethod
    def is_ours(obj: Any) -> bool:
        """True when ``obj`` carries Tollgate's metadata (see the module function :func:`is_ours`)."""
        return is_ours(obj)

    # products and prices

    @_translating
    def create_product(
        self, name: str, *, metadata: Mapping[str, str | int] | None = None
    ) -> StripeProductData:
        """Create a product (what a plan sells), tagged as ours."""
        params: ProductCreateParams = {"name": name, "metadata": _tag(metadata)}
        return self._product(self._client.v1.products.create(params).to_dict())

    @_translating
    def retrieve_product(self, product_id: str) -> StripeProductData:
        """Fetch one product."""
        return self._product(self._client.v1.products.retrieve(product_id).to_dict())

    @_translating
    def create_price(
        self,
        product_id: str,
        *,
        amount: int,
        currency: str,
        interval: Interval,
        plan_code: str,
        nickname: str | None = None,
    ) -> StripePriceData:
        """Create a recurring price of ``amount`` minor units per ``interval``, VAT included,
        tagged ``tollgate_plan=plan_code``."""
        raw = self._dialect.create_price(
            self._client,
            product_id=product_id,
            amount=amount,
            currency=currency.lower(),
            interval=interval,
            nickname=nickname,
            metadata=_tag({"tollgate_plan": plan_code}),
        )
        return self._price(raw)

    @_translating
    def retrieve_price(self, price_id: str) -> StripePriceData:
        """Fetch one price."""
        return self._price(self._dialect.retrieve_price(self._client, price_id))

    @_translating
    def list_prices(self, *, active_only: bool = True) -> list[StripePriceData]:
        """All prices on the account (ours and others'; filter with :func:`is_ours`)."""
        return [
            self._price(raw)
            for raw in self._dialect.list_prices(self._client, active_only=active_only)
        ]

    # customers

    @_translating
    def create_customer(
        self,
        email: str,
        *,
        name: str | None = None,
        country: str | None = None,
        vat_id: str | None = None,
        tax_exempt: TaxExempt | None = None,
        metadata: Mapping[str, str | int] | None = None,
        idempotency_key: str | None = None,
    ) -> StripeCustomerData:
        """Create a customer tagged as ours (pass ``tollgate_reader_id`` or ``tollgate_group_id``
        in ``metadata``); ``vat_id`` is an EU VAT number; ``tax_exempt`` is left to Stripe's
        default (``none``) when not given."""
        params: CustomerCreateParams = {"email": email, "metadata": _tag(metadata)}
        if tax_exempt is not None:
            params["tax_exempt"] = tax_exempt
        if name:
            params["name"] = name
        if country:
            params["address"] = {"country": country.upper()}
        if vat_id:
            params["tax_id_data"] = [{"type": "eu_vat", "value": vat_id}]
        options: stripe.RequestOptions = {}
        if idempotency_key:
            options["idempotency_key"] = idempotency_key
        return self._customer(self._client.v1.customers.create(params, options).to_dict())

    @_translating
    def update_customer(
        self,
        customer_id: str,
        *,
        email: str | None = None,
        name: str | None = None,
        country: str | None = None,
        tax_exempt: TaxExempt | None = None,
    ) -> StripeCustomerData:
        """Change a customer's e-mail, name, country or ``tax_exempt``; what is not given stays
        as it is."""
        params: CustomerUpdateParams = {}
        if tax_exempt is not None:
            params["tax_exempt"] = tax_exempt
        if email is not None:
            params["email"] = email
        if name is not None:
            params["name"] = name
        if country is not None:
            params["address"] = {"country": country.upper()}
        if not params:
            return self.retrieve_customer(customer_id)
        return self._customer(self._client.v1.customers.update(customer_id, params).to_dict())

    @_translating
    def set_customer_vat_id(self, customer_id: str, vat_id: str | None) -> None:
        """Make ``vat_id`` the customer's only EU VAT tax id (Stripe prints it on invoices), or
        remove every one when None: the customer's other ``eu_vat`` tax ids are deleted
        (``DELETE /v1/customers/{id}/tax_ids/{tax_id}``) and ``vat_id`` added when missing
        (``POST /v1/customers/{id}/tax_ids``); tax ids of other types stay."""
        tax_ids = self._client.v1.customers.tax_ids
        present = False
        for raw in tax_ids.list(customer_id).to_dict().get("data") or []:
            if raw.get("type") != "eu_vat":
                continue
            if vat_id is not None and raw.get("value") == vat_id and not present:
                present = True
                continue
            tax_ids.delete(customer_id, _str(raw, "id"))
        if vat_id is not None and not present:
            tax_ids.create(customer_id, {"type": "eu_vat", "value": vat_id})

    @_translating
    def retrieve_customer(self, customer_id: str) -> StripeCustomerData:
        """Fetch one customer (``deleted`` is True if it was deleted on Stripe)."""
        return self._customer(self._client.v1.customers.retrieve(customer_id).to_dict())

    # cards

    @_translating
    def create_setup_intent(
        self, customer_id: str, *, payment_method_types: Sequence[PaymentMethodType] = ("card",)
    ) -> SetupIntentSecret:
        """Start saving a card for later, off-session charges; the browser confirms it with
        Stripe.js ``confirmCardSetup(client_secret, ...)``."""
        params: SetupIntentCreateParams = {
            "customer": customer_id,
            "usage": "off_session",
            "metadata": _tag(),
        }
        self._dialect.add_setup_intent_types(params, payment_method_types)
        raw = self._client.v1.setup_intents.create(params).to_dict()
        return SetupIntentSecret(_str(raw, "id"), _str(raw, "client_secret"))

    @_translating
    def retrieve_setup_intent(self, setup_intent_id: str) -> SetupIntentData:
        """Where a SetupIntent stands, and which payment method it saved."""
        raw = self._client.v1.setup_intents.retrieve(setup_intent_id).to_dict()
        return SetupIntentData(
            id=_str(raw, "id"),
            status=_str(raw, "status"),
            customer_id=_id_of(raw.get("customer")),
            payment_method_id=_id_of(raw.get("payment_method")),
        )

    @_translating
    def attach_default_payment_method(self, customer_id: str, payment_method_id: str) -> CardData:
        """Attach a payment method to the customer (if not yet) and make it the default that pays
        every invoice; returns the card as the reader should see it.

        Raises :class:`PaymentDeclinedError` for a card refused when attached, and
        :class:`GatewayError` when it belongs to another customer.
        """
        raw = self._client.v1.payment_methods.retrieve(payment_method_id).to_dict()
        owner = _id_of(raw.get("customer"))
        if owner is None:
            attached = self._client.v1.payment_methods.attach(
                payment_method_id, {"customer": customer_id}
            )
            raw = attached.to_dict()
        elif owner != customer_id:
            raise GatewayError("This payment method belongs to another customer.")
        card = self._card(raw)
        self._client.v1.customers.update(
            customer_id, {"invoice_settings": {"default_payment_method": card.payment_method_id}}
        )
        return card

    @_translating
    def default_card(self, customer_id: str) -> CardData | None:
        """The customer's default payment method, or None when there is none."""
        customer = self._client.v1.customers.retrieve(customer_id).to_dict()
        payment_method_id = _id_of(_get(customer, "invoice_settings", "default_payment_method"))
        if payment_method_id is None:
            return None
        return self._card(self._client.v1.payment_methods.retrieve(payment_method_id).to_dict())

    # subscriptions

    @_translating
    def create_subscription(
        self,
        customer_id: str,
        price_id: str,
        *,
        quantity: int = 1,
        metadata: Mapping[str, str | int] | None = None,
        collection_method: CollectionMethod = "charge_automatically",
        days_until_due: int | None = None,
        idempotency_key: str | None = None,
        tax_rate_ids: Sequence[str] = (),
    ) -> StripeSubscriptionData:
        """Start a subscription now, charging the customer's default payment method for the first
        period at once; ``tax_rate_ids`` become its ``default_tax_rates`` (the VAT of every invoice).

        The result may be ``active`` (paid) or ``incomplete`` (the first payment failed or needs
        authentication: see :meth:`invoice_payment_intent`). Pass an ``idempotency_key`` (for
        example the scheduled subscription's id) so a retried ``tick`` cannot subscribe twice.
        ``send_invoice`` (pay by bank transfer) leaves the first invoice open for
        ``days_until_due`` days and starts the subscription ``active``.
        """
        params: SubscriptionCreateParams = {
            "customer": customer_id,
            "items": [self._dialect.new_item(price_id, quantity)],
            "metadata": _tag(metadata),
        }
        if tax_rate_ids:
            params["default_tax_rates"] = list(tax_rate_ids)
        self._dialect.add_create_options(
            params, collection_method=collection_method, days_until_due=days_until_due
        )
        options: stripe.RequestOptions = {}
        if idempotency_key:
            options["idempotency_key"] = idempotency_key
        return self._subscription(self._client.v1.subscriptions.create(params, options).to_dict())

    @_translating
    def retrieve_subscription(self, subscription_id: str) -> StripeSubscriptionData:
        """Fetch one subscription, whatever its status."""
        return self._subscription(self._client.v1.subscriptions.retrieve(subscription_id).to_dict())

    @_translating
    def list_subscriptions(self, *, customer_id: str | None = None) -> list[StripeSubscriptionData]:
        """All subscriptions (every status, cancelled ones too), of one customer or of all."""
        params: SubscriptionListParams = {"status": "all", "limit": 100}
        if customer_id is not None:
            params["customer"] = customer_id
        return [
            self._subscription(sub.to_dict())
            for sub in self._client.v1.subscriptions.list(params).auto_paging_iter()
        ]

    @_translating
    def cancel_at_period_end(self, subscription_id: str) -> StripeSubscriptionData:
        """Stop the subscription when the paid period ends (it stays active until then)."""
        return self._subscription(
            self._client.v1.subscriptions.update(
                subscription_id, {"cancel_at_period_end": True}
            ).to_dict()
        )

    @_translating
    def resume(self, subscription_id: str) -> StripeSubscriptionData:
        """Undo :meth:`cancel_at_period_end`: the subscription renews again."""
        return self._subscription(
            self._client.v1.subscriptions.update(
                subscription_id, {"cancel_at_period_end": False}
            ).to_dict()
        )

    @_translating
    def change_price(
        self,
        subscription_id: str,
        price_id: str,
        *,
        quantity: int | None = None,
        proration_date: datetime | None = None,
    ) -> StripeSubscriptionData:
        """Move the subscription to another price (monthly <-> yearly), keeping its quantity unless
        one is given. A change of interval invoices and charges at once.

        ``proration_date``: prorate as though the change happened then (Stripe's
        ``proration_date``), the moment :meth:`preview_price_change` was asked for, so that the
        charge is the one previewed; without it Stripe prorates at its own clock's now.
        """
        current = self.retrieve_subscription(subscription_id)
        item = self._dialect.changed_item(
            current.item_id, price_id, current.quantity if quantity is None else quantity
        )
        params: SubscriptionUpdateParams = {"items": [item]}
        if proration_date is not None:
            params["proration_date"] = int(proration_date.timestamp())
        return self._subscription(
            self._client.v1.subscriptions.update(subscription_id, params).to_dict()
        )

    @_translating
    def preview_price_change(
        self, subscription_id: str, price_id: str, *, proration_date: datetime | None = None
    ) -> PriceChangePreviewData:
        """What :meth:`change_price` to another interval would invoice now (Stripe's
        ``POST /v1/invoices/create_preview`` with the subscription's item moved to ``price_id``);
        nothing is changed. ``proration_date`` (Stripe's ``subscription_details.proration_date``)
        prorates as of that moment; pass the same to :meth:`change_price` to be charged this."""
        current = self.retrieve_subscription(subscription_id)
        item = self._dialect.changed_item(current.item_id, price_id, current.quantity)
        # The same change as change_price, with Stripe's default proration: a change of
        # interval resets the billing cycle, so the preview is the invoice made at once.
        details: InvoiceCreatePreviewParamsSubscriptionDetails = {"items": [item]}
        if proration_date is not None:
            details["proration_date"] = int(proration_date.timestamp())
        raw = self._client.v1.invoices.create_preview(
            {
                "customer": current.customer_id,
                "subscription": subscription_id,
                "subscription_details": details,
            }
        ).to_dict()
        return PriceChangePreviewData(
            currency=_str(raw, "currency"),
            total=self._dialect.invoice_total_before_credit(raw),
            amount_due=_int(raw.get("amount_due")),
        )

    @_translating
    def preview_quantity_change(
        self, subscription_id: str, quantity: int, *, proration_date: datetime
    ) -> QuantityChangePreviewData:
        """What :meth:`change_quantity` to ``quantity`` at ``proration_date`` would prorate
        (``POST /v1/invoices/create_preview``; nothing is changed). Only the proration lines of
        that moment count: the next period's charge and earlier pending prorations are not this
        change's."""
        current = self.retrieve_subscription(subscription_id)
        item = self._dialect.changed_item(current.item_id, None, quantity)
        moment = int(proration_date.timestamp())
        raw = self._client.v1.invoices.create_preview(
            {
                "customer": current.customer_id,
                "subscription": subscription_id,
                "subscription_details": {"items": [item], "proration_date": moment},
            }
        ).to_dict()
        net = tax = 0
        for line in _get(raw, "lines", "data") or []:
            prorated = self._dialect.proration_line(line)
            if prorated is not None and _int(_get(line, "period", "start")) == moment:
                net += prorated[0]
                tax += prorated[1]
        return QuantityChangePreviewData(
            currency=_str(raw, "currency"),
            net=net,
            tax=tax,
            proration_date=_time(moment),
        )

    @_translating
    def change_quantity(
        self, subscription_id: str, quantity: int, *, proration_date: datetime | None = None
    ) -> StripeSubscriptionData:
        """Change the number of seats, on the same price; Stripe prorates the rest of the period
        onto the next invoice, computed at ``proration_date`` (the moment a preview showed) or
        now."""
        current = self.retrieve_subscription(subscription_id)
        item = self._dialect.changed_item(current.item_id, None, quantity)
        params: SubscriptionUpdateParams = {"items": [item]}
        if proration_date is not None:
            params["proration_date"] = int(proration_date.timestamp())
        return self._subscription(
            self._client.v1.subscriptions.update(subscription_id, params).to_dict()
        )

    @_translating
    def cancel_now(self, subscription_id: str) -> StripeSubscriptionData:
        """End the subscription immediately (status ``canceled``), without a refund."""
        return self._subscription(self._client.v1.subscriptions.cancel(subscription_id).to_dict())

    # invoices and payments

    @_translating
    def list_invoices(
        self,
        *,
        customer_id: str | None = None,
        subscription_id: str | None = None,
        limit: int | None = None,
    ) -> list[StripeInvoiceData]:
        """Invoices of a customer and/or a subscription, newest first (all of them, or the newest
        ``limit``); invoices created in the same second keep the server's order."""
        params: InvoiceListParams = {"limit": min(limit or 100, 100), "expand": ["data.customer"]}
        if customer_id is not None:
            params["customer"] = customer_id
        if subscription_id is not None:
            params["subscription"] = subscription_id
        found = self._client.v1.invoices.list(params).auto_paging_iter()
        invoices = [self._invoice(invoice.to_dict()) for invoice in itertools.islice(found, limit)]
        return sorted(invoices, key=lambda invoice: invoice.created, reverse=True)

    @_translating
    def retrieve_invoice(self, invoice_id: str) -> StripeInvoiceData:
        """Fetch one invoice."""
        raw = self._client.v1.invoices.retrieve(invoice_id, {"expand": ["customer"]}).to_dict()
        return self._invoice(raw)

    @_translating
    def pay_invoice(self, invoice_id: str) -> StripeInvoiceData:
        """Try to collect an open invoice now with the customer's default payment method.

        A declined payment is not an error: the returned invoice is then still ``open``.
        """
        import stripe

        try:
            self._client.v1.invoices.pay(invoice_id)
        except stripe.CardError:
            pass
        return self.retrieve_invoice(invoice_id)

    @_translating
    def fund_bank_transfer(
        self, customer_id: str, amount: int, currency: str, *, reference: str
    ) -> None:
        """Test mode only: a bank transfer of ``amount`` arrives for the customer, and Stripe
        applies it to their open invoices (``reference`` names the invoice it pays first)."""
        self._client.v1.test_helpers.customers.fund_cash_balance(
            customer_id, {"amount": amount, "currency": currency, "reference": reference}
        )

    @_translating
    def invoice_payment_intent(self, invoice_id: str) -> PaymentIntentData | None:
        """The payment of an invoice (to authenticate it in the browser, or see why it failed);
        None when no payment was attempted."""
        raw = self._client.v1.invoices.retrieve(invoice_id).to_dict()
        intent_id = self._dialect.invoice_payment_intent_id(self._client, raw)
        if intent_id is None:
            return None
        intent = self._client.v1.payment_intents.retrieve(intent_id).to_dict()
        return PaymentIntentData(
            id=_str(intent, "id"),
            status=_str(intent, "status"),
            amount=_int(intent.get("amount")),
            currency=_str(intent, "currency"),
            client_secret=_opt_str(intent.get("client_secret")),
            payment_method_id=_id_of(intent.get("payment_method")),
            last_error_code=_opt_str(_get(intent, "last_payment_error", "code")),
            last_error_message=_opt_str(_get(intent, "last_payment_error", "message")),
        )

    @_translating
    def retrieve_charge(self, charge_id: str) -> StripeChargeData:
        """Fetch one charge, with the invoice it paid."""
        raw = self._client.v1.charges.retrieve(charge_id, {"expand": ["customer"]}).to_dict()
        intent_id = _id_of(raw.get("payment_intent"))
        invoice_id = (
            None
            if intent_id is None
            else self._dialect.invoice_id_for_payment_intent(self._client, intent_id)
        )
        return StripeChargeData(
            id=_str(raw, "id"),
            amount=_int(raw.get("amount")),
            amount_refunded=_int(raw.get("amount_refunded")),
            refunded=bool(raw.get("refunded")),
            currency=_str(raw, "currency"),
            status=_str(raw, "status"),
            customer_id=_id_of(raw.get("customer")),
            payment_intent_id=intent_id,
            invoice_id=invoice_id,
            disputed=bool(raw.get("disputed")),
            failure_code=_opt_str(raw.get("failure_code")),
            failure_message=_opt_str(raw.get("failure_message")),
            created=_time(raw.get("created")),
            metadata=_metadata(raw.get("metadata"), _get(raw, "customer", "metadata")),
        )

    # refunds and disputes

    @_translating
    def refund_invoice(
        self,
        invoice_id: str,
        *,
        amount: int | None = None,
        reason: RefundReason | None = None,
        metadata: Mapping[str, str | int] | None = None,
        idempotency_key: str | None = None,
    ) -> StripeRefundData:
        """Give back ``amount`` minor units of the payment of an invoice (what is left of it when
        None); refusing more than is left, which localstripe would accept."""
        invoice = self._client.v1.invoices.retrieve(invoice_id).to_dict()
        intent_id = self._dialect.invoice_payment_intent_id(self._client, invoice)
        intent: _Raw = {}
        if intent_id is not None:
            intent = self._client.v1.payment_intents.retrieve(
                intent_id, {"expand": ["latest_charge"]}
            ).to_dict()
        charge = intent.get("latest_charge")
        if intent_id is None or intent.get("status") != "succeeded" or not isinstance(charge, dict):
            raise GatewayError(f"Invoice {invoice_id} has no successful payment to refund.")
        left = _int(charge.get("amount")) - _int(charge.get("amount_refunded"))
        if left <= 0 or (amount is not None and not 0 < amount <= left):
            raise GatewayError(
                f"Invoice {invoice_id}: {left} {_str(charge, 'currency')} are left to refund, "
                f"not {amount if amount is not None else 'more'}."
            )
        tags = _tag({"tollgate_invoice_id": invoice_id, **(metadata or {})})
        params: RefundCreateParams = {
            "payment_intent": intent_id,
            "amount": left if amount is None else amount,
            "metadata": tags,
        }
        if reason is not None:
            self._dialect.add_refund_reason(params, reason, tags)
        options: stripe.RequestOptions = {}
        if idempotency_key:
            options["idempotency_key"] = idempotency_key
        return self._refund(self._client.v1.refunds.create(params, options).to_dict())

    @_translating
    def retrieve_refund(self, refund_id: str) -> StripeRefundData:
        """Fetch one refund."""
        return self._refund(self._client.v1.refunds.retrieve(refund_id).to_dict())

    @_translating
    def list_refunds(self, charge_id: str) -> list[StripeRefundData]:
        """Every refund of a charge, newest first (to mirror what ``charge.refunded`` announces)."""
        params: RefundListParams = {"charge": charge_id, "limit": 100}
        return [
            self._refund(refund.to_dict())
            for refund in self._client.v1.refunds.list(params).auto_paging_iter()
        ]

    @_translating
    def retrieve_dispute(self, dispute_id: str) -> StripeDisputeData:
        """Fetch one dispute (real Stripe only: localstripe has none)."""
        raw = self._dialect.retrieve_dispute(self._client, dispute_id)
        return StripeDisputeData(
            id=_str(raw, "id"),
            amount=_int(raw.get("amount")),
            currency=_str(raw, "currency"),
            status=_str(raw, "status"),
            reason=_opt_str(raw.get("reason")),
            charge_id=_id_of(raw.get("charge")),
            payment_intent_id=_id_of(raw.get("payment_intent")),
            created=_time(raw.get("created")),
            metadata=_metadata(raw.get("metadata"), _get(raw, "charge", "customer", "metadata")),
        )

    # tax rates

    @_translating
    def create_tax_rate(
        self,
        percentage: Decimal,
        country: str,
        *,
        display_name: str = "VAT",
        inclusive: bool = True,
        idempotency_key: str | None = None,
    ) -> StripeTaxRateData:
        """Create a VAT Tax Rate of ``percentage`` for ``country``, tagged as ours. Tax Rates are
        never edited: a new rate is a new Tax Rate."""
        params: dict[str, Any] = {
            "display_name": display_name,
            "percentage": str(percentage),
            "inclusive": inclusive,
            "description": f"VAT {country.upper()} {percentage}% (e-newspapers)",
            "metadata": _tag(
                {"tollgate_country": country.upper(), "tollgate_rate": str(percentage)}
            ),
        }
        self._dialect.add_tax_rate_country(params, country.upper())
        options: stripe.RequestOptions = {}
        if idempotency_key:
            options["idempotency_key"] = idempotency_key
        return self._tax_rate(self._client.v1.tax_rates.create(params, options).to_dict())  # type: ignore[arg-type]

    @_translating
    def list_tax_rates(self) -> list[StripeTaxRateData]:
        """Every Tax Rate on the account, archived ones too (ours and others'; filter with
        :func:`is_ours` and ``active``)."""
        return [
            self._tax_rate(rate.to_dict())
            for rate in self._client.v1.tax_rates.list({"limit": 100}).auto_paging_iter()
        ]

    @_translating
    def preview_next_invoice(self, customer_id: str, subscription_id: str) -> InvoicePreviewData:
        """The subscription's next invoice as it stands (``POST /v1/invoices/create_preview``):
        its total and the VAT inside at the Tax Rates it carries now."""
        raw = self._client.v1.invoices.create_preview(
            {"customer": customer_id, "subscription": subscription_id}
        ).to_dict()
        return InvoicePreviewData(
            currency=_str(raw, "currency"),
            subtotal=_int(raw.get("subtotal")),
            tax=self._dialect.invoice_tax(raw),
            total=_int(raw.get("total")),
            tax_rate_ids=self._dialect.invoice_tax_rate_ids(raw),
        )

    @_translating
    def set_subscription_tax_rates(
        self, subscription_id: str, tax_rate_ids: Sequence[str]
    ) -> StripeSubscriptionData:
        """Tax the subscription's next invoices at ``tax_rate_ids`` (its ``default_tax_rates``);
        invoices already issued keep theirs."""
        params: dict[str, Any] = {"default_tax_rates": list(tax_rate_ids) or ""}
        return self._subscription(
            self._client.v1.subscriptions.update(subscription_id, params).to_dict()  # type: ignore[arg-type]
        )

    # webhooks

    def register_webhook_endpoint(self, url: str, secret: str) -> bool:
        """Have the server send its webhooks to ``url``, signed with ``secret``, where that is
        done by API (localstripe); False on real Stripe, whose endpoints are set up in the
        Dashboard."""
        return self._dialect.register_webhook(self._api_base, url, secret)

    # reading raw objects

    def _product(self, raw: _Raw) -> StripeProductData:
        return StripeProductData(
            id=_str(raw, "id"),
            name=_str(raw, "name"),
            active=bool(raw.get("active", True)),
            metadata=_metadata(raw.get("metadata")),
        )

    def _price(self, raw: _Raw) -> StripePriceData:
        amount, interval, interval_count = self._dialect.price_terms(raw)
        return StripePriceData(
            id=_str(raw, "id"),
            product_id=_id_of(raw.get("product")) or "",
            amount=amount,
            currency=_str(raw, "currency"),
            interval=interval,
            interval_count=interval_count,
            active=bool(raw.get("active", True)),
            nickname=_opt_str(raw.get("nickname")),
            metadata=_metadata(raw.get("metadata")),
        )

    def _customer(self, raw: _Raw) -> StripeCustomerData:
        return StripeCustomerData(
            id=_str(raw, "id"),
            email=_opt_str(raw.get("email")),
            name=_opt_str(raw.get("name")),
            country=_opt_str(_get(raw, "address", "country")),
            default_payment_method_id=_id_of(
                _get(raw, "invoice_settings", "default_payment_method")
            ),
            created=_opt_time(raw.get("created")),
            deleted=bool(raw.get("deleted")),
            metadata=_metadata(raw.get("metadata")),
            balance=_int(raw.get("balance")),
            tax_exempt=_opt_str(raw.get("tax_exempt")) or "none",
        )

    def _card(self, raw: _Raw) -> CardData:
        kind = _str(raw, "type")
        details = raw.get(kind) if isinstance(raw.get(kind), Mapping) else {}
        return CardData(
            payment_method_id=_str(raw, "id"),
            type=kind,
            brand=_opt_str(_get(details, "brand")),
            last4=_opt_str(_get(details, "last4")),
            exp_month=_opt_int(_get(details, "exp_month")),
            exp_year=_opt_int(_get(details, "exp_year")),
            country=_opt_str(_get(details, "country")),
        )

    def _subscription(self, raw: _Raw) -> StripeSubscriptionData:
        items = _get(raw, "items", "data") or []
        if len(items) != 1 or not isinstance(items[0], Mapping):
            raise GatewayError(f"Subscription {raw.get('id')} does not have exactly one item.")
        item: _Raw = dict(items[0])
        start, end = self._dialect.subscription_period(raw)
        return StripeSubscriptionData(
            id=_str(raw, "id"),
            customer_id=_id_of(raw.get("customer")) or "",
            status=_str(raw, "status"),
            price_id=self._dialect.item_price_id(item),
            item_id=_str(item, "id"),
            quantity=_int(item.get("quantity"), 1),
            current_period_start=start,
            current_period_end=end,
            cancel_at_period_end=bool(raw.get("cancel_at_period_end")),
            cancel_at=_opt_time(raw.get("cancel_at")),
            canceled_at=self._dialect.canceled_at(raw),
            ended_at=_opt_time(raw.get("ended_at")),
            trial_end=_opt_time(raw.get("trial_end")),
            collection_method=_opt_str(raw.get("collection_method")) or "charge_automatically",
            latest_invoice_id=_id_of(raw.get("latest_invoice")),
            created=_time(raw.get("created")),
            metadata=_metadata(raw.get("metadata")),
            tax_rate_ids=tuple(
                rate
                for rate in (_id_of(item) for item in raw.get("default_tax_rates") or [])
                if rate
            ),
        )

    def _tax_rate(self, raw: _Raw) -> StripeTaxRateData:
        return StripeTaxRateData(
            id=_str(raw, "id"),
            display_name=_opt_str(raw.get("display_name")) or "",
            percentage=Decimal(str(raw.get("percentage") or 0)),
            inclusive=bool(raw.get("inclusive")),
            active=bool(raw.get("active", True)),
            country=self._dialect.tax_rate_country(raw),
            metadata=_metadata(raw.get("metadata")),
        )

    def _invoice(self, raw: _Raw) -> StripeInvoiceData:
        customer = raw.get("customer") if isinstance(raw.get("customer"), Mapping) else {}
        subscription_details = _get(raw, "parent", "subscription_details") or {}
        tax_ids = raw.get("customer_tax_ids") or _get(customer, "tax_ids", "data") or []
        return StripeInvoiceData(
            id=_str(raw, "id"),
            number=_opt_str(raw.get("number")),
            customer_id=_id_of(raw.get("customer")) or "",
            subscription_id=_id_of(_get(subscription_details, "subscription")),
            status=_opt_str(raw.get("status")) or "draft",
            currency=_str(raw, "currency"),
            subtotal=_int(raw.get("subtotal")),
            tax=self._dialect.invoice_tax(raw),
            total=_int(raw.get("total")),
            amount_due=_int(raw.get("amount_due")),
            amount_paid=_int(raw.get("amount_paid")),
            created=_time(raw.get("created")),
            paid_at=_opt_time(_get(raw, "status_transitions", "paid_at")),
            period_start=_opt_time(raw.get("period_start")),
            period_end=_opt_time(raw.get("period_end")),
            billing_reason=_opt_str(raw.get("billing_reason")),
            collection_method=_opt_str(raw.get("collection_method")) or "charge_automatically",
            attempt_count=_int(raw.get("attempt_count")),
            next_payment_attempt=_opt_time(raw.get("next_payment_attempt")),
            hosted_invoice_url=_opt_str(raw.get("hosted_invoice_url")),
            invoice_pdf_url=_opt_str(raw.get("invoice_pdf")),
            customer_country=_opt_str(_get(raw, "customer_address", "country"))
            or _opt_str(_get(customer, "address", "country")),
            customer_vat_id=_opt_str(_get(tax_ids[0], "value")) if tax_ids else None,
            metadata=_metadata(
                raw.get("metadata"),
                _get(subscription_details, "metadata"),
                _get(customer, "metadata"),
            ),
            tax_rate_ids=self._dialect.invoice_tax_rate_ids(raw),
            total_excluding_tax=_opt_int(raw.get("total_excluding_tax")),
        )

    def _refund(self, raw: _Raw) -> StripeRefundData:
        return StripeRefundData(
            id=_str(raw, "id"),
            amount=_int(raw.get("amount")),
            currency=_str(raw, "currency"),
            status=_opt_str(raw.get("status")) or "pending",
            charge_id=_id_of(raw.get("charge")),
            payment_intent_id=_id_of(raw.get("payment_intent")),
            reason=self._dialect.refund_reason(raw),
            created=_time(raw.get("created")),
            metadata=_metadata(raw.get("metadata")),
        )
