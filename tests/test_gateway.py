"""The Stripe gateway, against a real localstripe server (and its real-Stripe dialect, against a
recording fake client)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import stripe

from billing.gateway import (
    STRIPE_API_VERSION,
    GatewayError,
    GatewayUnavailableError,
    PaymentDeclinedError,
    StripeGateway,
    StripeObjectNotFoundError,
    StripePriceData,
    UnsupportedByServerError,
    is_ours,
)
from tests.helpers import StandInHandler, serving
from tests.payments_support import (
    DECLINED_ON_ATTACH,
    DECLINED_ON_CHARGE,
    FAILING_IBAN,
    THREE_D_SECURE_THEN_DECLINED,
    VISA,
)
from tests.stripe_server import LocalstripeError, LocalstripeServer


@pytest.fixture
def plans(gateway: StripeGateway) -> dict[str, StripePriceData]:
    """The individual monthly and yearly plans of one product."""
    product = gateway.create_product("Tollgate digital")
    return {
        "monthly": gateway.create_price(
            product.id, amount=900, currency="EUR", interval="month", plan_code="monthly"
        ),
        "yearly": gateway.create_price(
            product.id, amount=9000, currency="EUR", interval="year", plan_code="yearly"
        ),
    }


@pytest.fixture
def customer_with_card(
    gateway: StripeGateway, stripe_reset: LocalstripeServer
) -> Callable[..., str]:
    """Makes a customer of ours whose default payment method is the given card (or IBAN)."""

    def make(number: str = VISA, *, iban: str | None = None) -> str:
        customer = gateway.create_customer("reader@example.org", metadata={"tollgate_reader_id": 7})
        method = stripe_reset.create_sepa_debit(iban) if iban else stripe_reset.create_card(number)
        gateway.attach_default_payment_method(customer.id, method)
        return customer.id

    return make


def wait_for(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll ``check`` until it is true or the deadline passes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_a_product_and_its_monthly_plan_are_created_with_our_metadata(
    gateway: StripeGateway,
) -> None:
    product = gateway.create_product("Tollgate digital")
    price = gateway.create_price(
        product.id, amount=900, currency="EUR", interval="month", plan_code="monthly"
    )

    assert product.name == "Tollgate digital"
    assert is_ours(product)
    assert (price.product_id, price.amount, price.currency) == (product.id, 900, "eur")
    assert (price.interval, price.interval_count, price.active) == ("month", 1, True)
    assert price.metadata == {"tollgate_app": "tollgate", "tollgate_plan": "monthly"}
    assert gateway.retrieve_price(price.id) == price
    assert [p.id for p in gateway.list_prices()] == [price.id]


def test_a_customer_is_created_with_our_metadata_and_read_back(gateway: StripeGateway) -> None:
    created = gateway.create_customer(
        "anna@example.org", name="Anna", country="de", metadata={"tollgate_reader_id": 42}
    )

    fetched = gateway.retrieve_customer(created.id)

    assert fetched == created
    assert (fetched.email, fetched.name, fetched.country) == ("anna@example.org", "Anna", "DE")
    assert fetched.metadata == {"tollgate_app": "tollgate", "tollgate_reader_id": "42"}
    assert fetched.default_payment_method_id is None
    assert fetched.created is not None and fetched.created.tzinfo is UTC


def test_a_customers_tax_exempt_is_none_unless_set_and_changes_on_update(
    gateway: StripeGateway, stripe_reset: LocalstripeServer
) -> None:
    plain = gateway.create_customer("anna@example.org")
    business = gateway.create_customer("accounts@ministry.example", tax_exempt="reverse")

    assert plain.tax_exempt == "none"
    assert gateway.retrieve_customer(business.id).tax_exempt == "reverse"
    assert gateway.update_customer(business.id, tax_exempt="none").tax_exempt == "none"
    assert gateway.retrieve_customer(business.id).tax_exempt == "none"
    assert gateway.update_customer(plain.id, country="fr").tax_exempt == "none"


def test_the_stand_in_refuses_a_tax_exempt_stripe_does_not_document(
    stripe_reset: LocalstripeServer,
) -> None:
    with pytest.raises(LocalstripeError, match=r"(?s)HTTP 400.*Invalid tax_exempt"):
        stripe_reset.request("POST", "/v1/customers", {"tax_exempt": "yes"})
    customer = stripe_reset.request("POST", "/v1/customers", {"email": "a@example.org"})
    with pytest.raises(LocalstripeError, match=r"(?s)HTTP 400.*Invalid tax_exempt"):
        stripe_reset.request("POST", f"/v1/customers/{customer['id']}", {"tax_exempt": "half"})
    cleared = stripe_reset.request("POST", f"/v1/customers/{customer['id']}", {"tax_exempt": ""})
    assert cleared["tax_exempt"] == "none"


def test_metadata_keys_that_are_not_ours_are_refused(gateway: StripeGateway) -> None:
    with pytest.raises(ValueError, match="tollgate_"):
        gateway.create_customer("anna@example.org", metadata={"reader": 1})


def test_a_card_saved_through_a_setup_intent_becomes_the_default_and_reads_back(
    gateway: StripeGateway, stripe_reset: LocalstripeServer
) -> None:
    customer = gateway.create_customer("anna@example.org")
    intent = gateway.create_setup_intent(customer.id)
    assert intent.client_secret.startswith(f"{intent.id}_secret_")

    stripe_reset.confirm_setup_intent(intent.id, stripe_reset.create_card(VISA))
    confirmed = gateway.retrieve_setup_intent(intent.id)
    assert confirmed.status == "succeeded"
    assert confirmed.payment_method_id is not None

    card = gateway.attach_default_payment_method(customer.id, confirmed.payment_method_id)

    assert (card.type, card.brand, card.last4, card.exp_month) == ("card", "visa", "4242", 12)
    assert gateway.default_card(customer.id) == card
    assert gateway.retrieve_customer(customer.id).default_payment_method_id == (
        card.payment_method_id
    )


def test_attaching_the_same_card_twice_is_harmless(
    gateway: StripeGateway, stripe_reset: LocalstripeServer
) -> None:
    customer = gateway.create_customer("anna@example.org")
    method = stripe_reset.create_card(VISA)

    first = gateway.attach_default_payment_method(customer.id, method)

    assert gateway.attach_default_payment_method(customer.id, method) == first


def test_a_card_declined_when_attached_raises_payment_declined(
    gateway: StripeGateway, stripe_reset: LocalstripeServer
) -> None:
    customer = gateway.create_customer("anna@example.org")

    with pytest.raises(PaymentDeclinedError, match="declined"):
        gateway.attach_default_payment_method(
            customer.id, stripe_reset.create_card(DECLINED_ON_ATTACH)
        )
    assert gateway.default_card(customer.id) is None


def test_a_customers_eu_vat_tax_id_is_replaced_or_removed_and_other_tax_ids_stay(
    gateway: StripeGateway, stripe_reset: LocalstripeServer
) -> None:
    business = gateway.create_customer("accounts@ministry.example", vat_id="DE136695976")
    path = f"/v1/customers/{business.id}/tax_ids"
    stripe_reset.request("POST", path, {"type": "au_abn", "value": "51824753556"})

    def tax_ids() -> list[tuple[str, str]]:
        return sorted((t["type"], t["value"]) for t in stripe_reset.request("GET", path)["data"])

    gateway.set_customer_vat_id(business.id, "FR40303265045")
    replaced = tax_ids()
    gateway.set_customer_vat_id(business.id, "FR40303265045")
    again = tax_ids()
    gateway.set_customer_vat_id(business.id, None)

    assert replaced == [("au_abn", "51824753556"), ("eu_vat", "FR40303265045")]
    assert again == replaced, "setting the same one changes nothing"
    assert tax_ids() == [("au_abn", "51824753556")]


def test_a_card_of_another_customer_is_refused(
    gateway: StripeGateway, customer_with_card: Callable[..., str]
) -> None:
    owner = customer_with_card()
    method = gateway.retrieve_customer(owner).default_payment_method_id
    assert method is not None
    other = gateway.create_customer("other@example.org")

    with pytest.raises(GatewayError, match="another customer"):
        gateway.attach_default_payment_method(other.id, method)


def test_a_subscription_starts_active_and_its_first_invoice_is_paid_in_full(
    gateway: StripeGateway,
    plans: dict[str, StripePriceData],
    customer_with_card: Callable[..., str],
) -> None:
    customer = customer_with_card()
    before = datetime.now(UTC) - timedelta(seconds=5)

    subscription = gateway.create_subscription(
        customer, plans["monthly"].id, metadata={"tollgate_reader_id": 7}
    )

    assert subscription.status == "active"
    assert (subscription.customer_id, subscription.price_id) == (customer, plans["monthly"].id)
    assert subscription.quantity == 1
    assert subscription.metadata == {"tollgate_app": "tollgate", "tollgate_reader_id": "7"}
    assert before <= subscription.current_period_start <= datetime.now(UTC)
    assert subscription.current_period_end - subscription.current_period_start >= timedelta(days=28)
    assert not subscription.cancel_at_period_end
    assert subscription.trial_end is None
    assert subscription.collection_method == "charge_automatically"
    assert subscription.latest_invoice_id is not None
    invoice = gateway.retrieve_invoice(subscription.latest_invoice_id)
    assert (invoice.status, invoice.currency) == ("paid", "eur")
    assert (invoice.subtotal, invoice.tax, invoice.total, invoice.amount_paid) == (900, 0, 900, 900)
    assert invoice.subscription_id == subscription.id
    assert invoice.customer_id == customer
    assert invoice.paid_at is not None and invoice.paid_at.tzinfo is UTC
    assert is_ours(invoice), "an invoice inherits the tollgate_* keys of the customer it bills"
    assert invoice.metadata["tollgate_reader_id"] == "7"
    assert gateway.retrieve_subscription(subscription.id) == subscription


def test_seats_are_a_quantity_billed_per_seat(
    gateway: StripeGateway,
    plans: dict[str, StripePriceData],
    customer_with_card: Callable[..., str],
) -> None:
    subscription = gateway.create_subscription(
        customer_with_card(), plans["yearly"].id, quantity=3, metadata={"tollgate_group_id": 1}
    )

    assert subscription.quantity == 3
    assert subscription.latest_invoice_id is not None
    assert gateway.retrieve_invoice(subscription.latest_invoice_id).amount_paid == 27000
    assert gateway.change_quantity(subscription.id, 5).quantity == 5


def test_cancelling_at_period_end_keeps_it_active_until_resumed(
    gateway: StripeGateway,
    plans: dict[str, StripePriceData],
    customer_with_card: Callable[..., str],
) -> None:
    subscription = gateway.create_subscription(customer_with_card(), plans["monthly"].id)

    cancelling = gateway.cancel_at_period_end(subscription.id)
    assert (cancelling.status, cancelling.cancel_at_period_end) == ("active", True)
    assert cancelling.ended_at is None

    resumed = gateway.resume(subscription.id)
    assert (resumed.status, resumed.cancel_at_period_end) == ("active", False)
    assert gateway.retrieve_subscription(subscription.id).cancel_at_period_end is False


def test_switching_from_monthly_to_yearly_and_back_changes_the_price(
    gateway: StripeGateway,
    plans: dict[str, StripePriceData],
    customer_with_card: Callable[..., str],
) -> None:
    subscription = gateway.create_subscription(customer_with_card(), plans["monthly"].id)

    yearly = gateway.change_price(subscription.id, plans["yearly"].id)

    assert (yearly.status, yearly.price_id, yearly.quantity) == ("active", plans["yearly"].id, 1)
    assert yearly.current_period_end - yearly.current_period_start >= timedelta(days=365)
    assert yearly.latest_invoice_id not in (None, subscription.latest_invoice_id)
    assert yearly.latest_invoice_id is not None
    upgrade = gateway.retrieve_invoice(yearly.latest_invoice_id)
    assert upgrade.status == "paid"
    assert upgrade.total == 9000 - 900, "localstripe credits the unused month"

    monthly = gateway.change_price(subscription.id, plans["monthly"].id)
    assert (monthly.status, monthly.price_id) == ("active", plans["monthly"].id)


def test_cancelling_now_ends_the_subscription(
    gateway: StripeGateway,
    plans: dict[str, StripePriceData],
    customer_with_card: Callable[..., str],
) -> None:
    customer = customer_with_card()
    subscription = gateway.create_subscription(customer, plans["monthly"].id)

    ended = gateway.cancel_now(subscription.id)

    assert ended.status == "canceled"
    assert ended.ended_at is not None and ended.canceled_at is not None
    assert gateway.retrieve_subscription(subscription.id).status == "canceled"
    assert [s.status for s in gateway.list_subscriptions(customer_id=customer)] == ["canceled"]


def test_a_declined_first_payment_leaves_the_subscription_incomplete(
    gateway: StripeGateway,
    plans: dict[str, StripePriceData],
    customer_with_card: Callable[..., str],
) -> None:
    subscription = gateway.create_subscription(
        customer_with_card(DECLINED_ON_CHARGE), plans["monthly"].id
    )

    assert subscription.status == "incomplete"
    assert subscription.latest_invoice_id is not None
    invoice = gateway.retrieve_invoice(subscription.latest_invoice_id)
    assert (invoice.status, invoice.amount_paid) == ("open", 0)
    payment = gateway.invoice_payment_intent(invoice.id)
    assert payment is not None
    assert payment.status == "requires_payment_method"
    assert payment.last_error_code == "card_declined"


def test_failed_3d_secure_on_the_first_payment_cancels_the_subscription(
    gateway: StripeGateway,
    stripe_reset: LocalstripeServer,
    plans: dict[str, StripePriceData],
    customer_with_card: Callable[..., str],
) -> None:
    subscription = gateway.create_subscription(
        customer_with_card(THREE_D_SECURE_THEN_DECLINED), plans["monthly"].id
    )
    assert subscription.status == "incomplete"
    assert subscription.latest_invoice_id is not None
    payment = gateway.invoice_payment_intent(subscription.latest_invoice_id)
    assert payment is not None and payment.client_secret is not None
    assert payment.status == "requires_action"

    stripe_reset.authenticate_payment_intent(payment.id, payment.client_secret, success=False)

    assert gateway.retrieve_subscription(subscription.id).status == "canceled"
    failed = gateway.invoice_payment_intent(subscription.latest_invoice_id)
    assert failed is not None
    assert failed.status == "requires_payment_method"
    assert failed.last_error_code == "payment_intent_authentication_failure"


def test_a_declined_renewal_makes_it_past_due_and_paying_with_a_new_card_recovers_it(
    gateway: StripeGateway,
    stripe_reset: LocalstripeServer,
    plans: dict[str, StripePriceData],
    customer_with_card: Callable[..., str],
) -> None:
    customer = customer_with_card()
    subscription = gateway.create_subscription(customer, plans["monthly"].id)
    gateway.attach_default_payment_method(customer, stripe_reset.create_card(DECLINED_ON_CHARGE))

    past_due = gateway.change_price(subscription.id, plans["yearly"].id)

    assert past_due.status == "past_due"
    assert past_due.latest_invoice_id is not None
    assert gateway.retrieve_invoice(past_due.latest_invoice_id).status == "open"
    assert gateway.pay_invoice(past_due.latest_invoice_id).status == "open"

    gateway.attach_default_payment_method(customer, stripe_reset.create_card(VISA))
    assert gateway.pay_invoice(past_due.latest_invoice_id).status == "paid"
    assert gateway.retrieve_subscription(subscription.id).status == "active"


def test_a_declined_sepa_debit_cancels_the_subscription_half_a_second_later(
    gateway: StripeGateway,
    plans: dict[str, StripePriceData],
    customer_with_card: Callable[..., str],
) -> None:
    customer = customer_with_card(iban=FAILING_IBAN)
    card = gateway.default_card(customer)
    assert card is not None and (card.type, card.brand, card.last4) == ("sepa_debit", None, "3001")

    subscription = gateway.create_subscription(customer, plans["monthly"].id)

    assert subscription.status == "active", "a SEPA debit starts pending"
    assert wait_for(lambda: gateway.retrieve_subscription(subscription.id).status == "canceled")


def test_refunding_part_of_an_invoice_shows_on_its_charge(
    gateway: StripeGateway,
    plans: dict[str, StripePriceData],
    customer_with_card: Callable[..., str],
) -> None:
    subscription = gateway.create_subscription(customer_with_card(), plans["monthly"].id)
    assert subscription.latest_invoice_id is not None

    refund = gateway.refund_invoice(
        subscription.latest_invoice_id, amount=300, reason="requested_by_customer"
    )

    assert (refund.amount, refund.currency, refund.status) == (300, "eur", "succeeded")
    assert refund.reason == "requested_by_customer"
    assert is_ours(refund)
    assert refund.metadata["tollgate_invoice_id"] == subscription.latest_invoice_id
    assert refund.charge_id is not None
    charge = gateway.retrieve_charge(refund.charge_id)
    assert (charge.amount, charge.amount_refunded, charge.refunded) == (900, 300, False)
    assert charge.invoice_id == subscription.latest_invoice_id
    assert is_ours(charge), "a charge inherits the tollgate_* keys of its customer"
    assert gateway.retrieve_refund(refund.id) == refund

    with pytest.raises(GatewayError, match="600 eur are left"):
        gateway.refund_invoice(subscription.latest_invoice_id, amount=601)
    rest = gateway.refund_invoice(subscription.latest_invoice_id)
    assert rest.amount == 600
    assert gateway.retrieve_charge(refund.charge_id).refunded is True
    with pytest.raises(GatewayError, match="0 eur are left"):
        gateway.refund_invoice(subscription.latest_invoice_id)


def test_an_invoice_without_a_payment_cannot_be_refunded(
    gateway: StripeGateway,
    plans: dict[str, StripePriceData],
    customer_with_card: Callable[..., str],
) -> None:
    subscription = gateway.create_subscription(
        customer_with_card(THREE_D_SECURE_THEN_DECLINED), plans["monthly"].id
    )
    assert subscription.latest_invoice_id is not None

    with pytest.raises(GatewayError, match="no successful payment"):
        gateway.refund_invoice(subscription.latest_invoice_id)


def test_the_invoices_of_a_customer_are_listed_newest_first(
    gateway: StripeGateway,
    plans: dict[str, StripePriceData],
    customer_with_card: Callable[..., str],
) -> None:
    customer = customer_with_card()
    subscription = gateway.create_subscription(customer, plans["monthly"].id)
    gateway.change_price(subscription.id, plans["yearly"].id)
    someone_else = gateway.create_subscription(customer_with_card(), plans["monthly"].id)

    invoices = gateway.list_invoices(customer_id=customer)

    assert sorted(i.total for i in invoices) == [900, 8100]
    assert {i.customer_id for i in invoices} == {customer}
    assert invoices[0].created >= invoices[1].created
    assert len(gateway.list_invoices(customer_id=customer, limit=1)) == 1
    by_subscription = gateway.list_invoices(subscription_id=subscription.id)
    assert {i.id for i in by_subscription} == {i.id for i in invoices}
    assert someone_else.latest_invoice_id not in {i.id for i in invoices}


def test_objects_without_our_metadata_are_not_ours(
    gateway: StripeGateway, stripe_reset: LocalstripeServer
) -> None:
    foreign = stripe_reset.request("POST", "/v1/customers", {"email": "shop@example.org"})
    tagged_elsewhere = stripe_reset.request(
        "POST", "/v1/customers", {"email": "x@example.org", "metadata": {"tollgate_app": "other"}}
    )
    ours = gateway.create_customer("anna@example.org")

    assert not is_ours(gateway.retrieve_customer(foreign["id"]))
    assert not is_ours(foreign)
    assert not is_ours(tagged_elsewhere)
    assert not is_ours({"object": "charge"})
    assert not is_ours(None)
    assert is_ours(ours)
    assert StripeGateway.is_ours(gateway.retrieve_customer(ours.id))
    assert is_ours({"metadata": {"tollgate_app": "tollgate"}})


def test_an_unknown_object_raises_not_found(gateway: StripeGateway) -> None:
    with pytest.raises(StripeObjectNotFoundError):
        gateway.retrieve_subscription("sub_doesnotexist")
    with pytest.raises(StripeObjectNotFoundError):
        gateway.retrieve_invoice("in_doesnotexist")


def test_localstripe_has_no_disputes(gateway: StripeGateway) -> None:
    assert gateway.server == "localstripe"
    with pytest.raises(UnsupportedByServerError):
        gateway.retrieve_dispute("dp_1")


def test_a_send_invoice_subscription_is_active_at_once_with_its_invoice_open_until_due(
    gateway: StripeGateway, plans: dict[str, StripePriceData]
) -> None:
    customer = gateway.create_customer("billing@example.org", metadata={"tollgate_group_id": "g"})
    created = gateway.create_subscription(
        customer.id,
        plans["yearly"].id,
        quantity=3,
        collection_method="send_invoice",
        days_until_due=30,
    )
    assert created.status == "active"
    assert created.collection_method == "send_invoice"
    assert created.latest_invoice_id is not None
    invoice = gateway.retrieve_invoice(created.latest_invoice_id)
    assert invoice.status == "open"
    assert invoice.collection_method == "send_invoice"
    assert invoice.amount_due == 3 * 9000
    assert invoice.amount_paid == 0
    raw = stripe_raw_invoice(gateway, invoice.id)
    assert raw["due_date"] == raw["period_start"] + 30 * 86400


def test_a_bank_transfer_short_of_the_amount_leaves_the_invoice_open_and_the_rest_pays_it(
    gateway: StripeGateway, plans: dict[str, StripePriceData]
) -> None:
    customer = gateway.create_customer("billing@example.org", metadata={"tollgate_group_id": "g"})
    created = gateway.create_subscription(
        customer.id,
        plans["yearly"].id,
        quantity=2,
        collection_method="send_invoice",
        days_until_due=30,
    )
    assert created.latest_invoice_id is not None
    gateway.fund_bank_transfer(customer.id, 10000, "eur", reference=created.latest_invoice_id)
    assert gateway.retrieve_invoice(created.latest_invoice_id).status == "open"
    gateway.fund_bank_transfer(customer.id, 8000, "eur", reference=created.latest_invoice_id)
    paid = gateway.retrieve_invoice(created.latest_invoice_id)
    assert (paid.status, paid.amount_paid) == ("paid", 18000)
    assert paid.paid_at is not None
    assert gateway.retrieve_subscription(created.id).status == "active"


def test_send_invoice_without_days_until_due_is_refused_like_stripe_does(
    gateway: StripeGateway, plans: dict[str, StripePriceData], localstripe_url: str
) -> None:
    customer = gateway.create_customer("billing@example.org", metadata={"tollgate_group_id": "g"})
    client = stripe.StripeClient("sk_test_localstripe", base_addresses={"api": localstripe_url})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.create(
            {
                "customer": customer.id,
                "items": [{"plan": plans["yearly"].id}],  # type: ignore[typeddict-unknown-key]
                "collection_method": "send_invoice",
            }
        )


def stripe_raw_invoice(gateway: StripeGateway, invoice_id: str) -> dict[str, Any]:
    """The invoice as the server sends it (fields the gateway does not map)."""
    return gateway._client.v1.invoices.retrieve(invoice_id).to_dict()


class _Receiver(StandInHandler):
    received: list[tuple[float, bytes, str]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((time.monotonic(), body, self.headers["Stripe-Signature"]))
        self.send_response(500)  # localstripe does not retry
        self.end_headers()


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[tuple[float, bytes, str]]]]:
    """A local HTTP endpoint that records what is posted to it, answering 500."""
    received: list[tuple[float, bytes, str]] = []
    handler = type("Handler", (_Receiver,), {"received": received})
    with serving(handler) as base:
        yield f"{base}/webhooks/stripe", received


def test_localstripe_sends_signed_webhooks_a_second_later_but_never_subscription_updates(
    gateway: StripeGateway,
    plans: dict[str, StripePriceData],
    customer_with_card: Callable[..., str],
    webhook_receiver: tuple[str, list[tuple[float, bytes, str]]],
) -> None:
    url, received = webhook_receiver
    assert gateway.register_webhook_endpoint(url, "whsec_test")
    customer = customer_with_card()
    started = time.monotonic()
    subscription = gateway.create_subscription(customer, plans["monthly"].id)
    gateway.cancel_at_period_end(subscription.id)
    assert subscription.latest_invoice_id is not None
    gateway.refund_invoice(subscription.latest_invoice_id)
    gateway.cancel_now(subscription.id)

    deleted = f'"id": "{subscription.id}"'.encode()
    assert wait_for(
        lambda: any(b"subscription.deleted" in body and deleted in body for _, body, _ in received)
    )
    time.sleep(0.3)
    types = []
    for arrived, body, signature in received:
        stamp, digest = (part.split("=", 1)[1] for part in signature.split(","))
        expected = hmac.new(b"whsec_test", stamp.encode() + b"." + body, hashlib.sha256)
        assert hmac.compare_digest(digest, expected.hexdigest())
        event = json.loads(body)
        if event["data"]["object"].get("customer") != customer:
            continue  # an earlier test's event, queued before the reset
        assert arrived - started >= 0.9, "sent about a second after the call"
        types.append(event["type"])
    assert types.count("customer.subscription.created") == 1, "sent once, not retried after 500"
    assert {"invoice.payment_succeeded", "customer.subscription.deleted"} <= set(types)
    assert not {"customer.subscription.updated", "invoice.paid", "charge.refunded"} & set(types)


def test_each_test_process_has_its_own_server_and_store_file(
    gateway: StripeGateway, stripe_reset: LocalstripeServer
) -> None:
    gateway.create_customer("anna@example.org")

    assert stripe_reset.store_path.exists()
    assert stripe_reset.store_path != Path("/tmp/localstripe.pickle")  # noqa: S108
    assert stripe_reset.url.startswith("http://127.0.0.1:")


# --- the real-Stripe dialect, against a recording fake client -----------------------------------


class _FakeObject:
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._data))


class _FakeList:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.data = [_FakeObject(item) for item in items]

    def auto_paging_iter(self) -> Iterator[_FakeObject]:
        return iter(self.data)


class _FakeService:
    def __init__(self, client: FakeClient, name: str) -> None:
        self._client = client
        self._name = name

    def __getattr__(self, method: str) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            key = f"{self._name}.{method}"
            self._client.calls.append((key, args))
            answer = self._client.answers[key]
            if isinstance(answer, Exception):
                raise answer
            return _FakeList(answer) if isinstance(answer, list) else _FakeObject(answer)

        return call


class FakeClient:
    """Stands in for ``stripe.StripeClient``: records calls, answers from ``answers``."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.v1 = self

    def __getattr__(self, name: str) -> _FakeService:
        return _FakeService(self, name)


NOW = 1_795_000_000
STRIPE_SUBSCRIPTION = {
    "id": "sub_1",
    "object": "subscription",
    "customer": "cus_1",
    "status": "active",
    "items": {
        "data": [
            {
                "id": "si_1",
                "price": {"id": "price_1"},
                "quantity": 2,
                "current_period_start": NOW,
                "current_period_end": NOW + 86400 * 365,
            }
        ]
    },
    "cancel_at_period_end": False,
    "created": NOW,
    "collection_method": "send_invoice",
    "metadata": {"tollgate_app": "tollgate", "tollgate_group_id": "3"},
}


def stripe_gateway(answers: dict[str, Any]) -> tuple[StripeGateway, FakeClient]:
    """A gateway in real-Stripe mode over a fake client."""
    client = FakeClient(answers)
    return StripeGateway(client, api_base="https://api.stripe.com"), client  # type: ignore[arg-type]


def test_the_pinned_api_version_is_the_one_stripe_python_is_generated_for() -> None:
    assert stripe.api_version == STRIPE_API_VERSION


def test_the_server_is_chosen_from_the_api_base() -> None:
    config = {"STRIPE_SECRET_KEY": "sk_test_x"}
    real = StripeGateway.from_config({**config, "STRIPE_API_BASE": "https://api.stripe.com/"})
    local = StripeGateway.from_config(config)

    assert (real.server, local.server) == ("stripe", "localstripe")
    with pytest.raises(ValueError, match="STRIPE_SECRET_KEY"):
        StripeGateway.from_config({})


def test_on_stripe_plans_are_prices_with_vat_included() -> None:
    price = {
        "id": "price_1",
        "product": "prod_1",
        "unit_amount": 9000,
        "currency": "eur",
        "recurring": {"interval": "year", "interval_count": 1},
        "active": True,
        "metadata": {"tollgate_app": "tollgate", "tollgate_plan": "yearly"},
    }
    gateway, client = stripe_gateway({"prices.create": price})

    created = gateway.create_price(
        "prod_1", amount=9000, currency="EUR", interval="year", plan_code="yearly"
    )

    assert (created.amount, created.interval) == (9000, "year")
    assert client.calls == [
        (
            "prices.create",
            (
                {
                    "product": "prod_1",
                    "unit_amount": 9000,
                    "currency": "eur",
                    "recurring": {"interval": "year"},
                    "tax_behavior": "inclusive",
                    "metadata": {"tollgate_app": "tollgate", "tollgate_plan": "yearly"},
                },
            ),
        )
    ]


def test_on_stripe_subscriptions_take_a_price_off_session_and_read_the_period_from_items() -> None:
    gateway, client = stripe_gateway({"subscriptions.create": STRIPE_SUBSCRIPTION})

    subscription = gateway.create_subscription(
        "cus_1",
        "price_1",
        quantity=2,
        metadata={"tollgate_group_id": 3},
        collection_method="send_invoice",
        idempotency_key="scheduled-9",
    )

    params, options = client.calls[0][1]
    assert params["items"] == [{"price": "price_1", "quantity": 2}]
    assert (params["off_session"], params["days_until_due"]) == (True, 30)
    assert options == {"idempotency_key": "scheduled-9"}
    assert subscription.current_period_start == datetime.fromtimestamp(NOW, UTC)
    assert (subscription.price_id, subscription.item_id, subscription.quantity) == (
        "price_1",
        "si_1",
        2,
    )


def test_on_stripe_a_setup_intent_allows_card_and_refunds_give_stripe_their_reason() -> None:
    gateway, client = stripe_gateway(
        {
            "setup_intents.create": {"id": "seti_1", "client_secret": "seti_1_secret_x"},
            "invoices.retrieve": {"id": "in_1"},
            "payment_intents.retrieve": {
                "id": "pi_1",
                "status": "succeeded",
                "latest_charge": {"amount": 900, "amount_refunded": 0, "currency": "eur"},
            },
            "invoice_payments.list": [
                {"status": "paid", "created": NOW, "payment": {"payment_intent": "pi_1"}}
            ],
            "refunds.create": {
                "id": "re_1",
                "amount": 900,
                "currency": "eur",
                "status": "succeeded",
                "charge": "ch_1",
                "payment_intent": "pi_1",
                "reason": "duplicate",
                "created": NOW,
                "metadata": {"tollgate_app": "tollgate"},
            },
        }
    )

    assert gateway.create_setup_intent("cus_1") == ("seti_1", "seti_1_secret_x")
    refund = gateway.refund_invoice("in_1", reason="duplicate")

    assert client.calls[0][1][0]["allowed_payment_method_types"] == ["card"]
    refund_params = client.calls[-1][1][0]
    assert (refund_params["payment_intent"], refund_params["reason"]) == ("pi_1", "duplicate")
    assert refund.reason == "duplicate"


def test_on_stripe_invoice_tax_is_the_sum_of_its_taxes_and_metadata_comes_from_the_subscription() -> (
    None
):
    invoice = {
        "id": "in_1",
        "number": "TG-0001",
        "customer": {"id": "cus_1", "metadata": {}},
        "parent": {
            "subscription_details": {
                "subscription": "sub_1",
                "metadata": {"tollgate_app": "tollgate", "tollgate_reader_id": "5"},
            }
        },
        "status": "paid",
        "currency": "eur",
        "subtotal": 900,
        "total_taxes": [{"amount": 144}, {"amount": 10}],
        "total": 900,
        "amount_due": 900,
        "amount_paid": 900,
        "created": NOW,
        "status_transitions": {"paid_at": NOW},
        "customer_address": {"country": "AT"},
        "customer_tax_ids": [{"type": "eu_vat", "value": "ATU12345678"}],
        "hosted_invoice_url": "https://invoice.stripe.com/i/x",
        "invoice_pdf": "https://pay.stripe.com/invoice/x/pdf",
        "metadata": {},
    }
    gateway, _ = stripe_gateway({"invoices.retrieve": invoice})

    parsed = gateway.retrieve_invoice("in_1")

    assert (parsed.tax, parsed.subscription_id, parsed.number) == (154, "sub_1", "TG-0001")
    assert (parsed.customer_country, parsed.customer_vat_id) == ("AT", "ATU12345678")
    assert parsed.paid_at == datetime.fromtimestamp(NOW, UTC)
    assert is_ours(parsed) and parsed.metadata["tollgate_reader_id"] == "5"


def test_stripe_errors_never_reach_the_caller() -> None:
    declined = stripe.CardError("Your card was declined.", None, "card_declined", http_status=402)
    missing = stripe.InvalidRequestError("No such subscription", None, http_status=404)
    down = stripe.APIConnectionError("Network down")
    gateway, _ = stripe_gateway({"payment_methods.retrieve": declined})
    with pytest.raises(PaymentDeclinedError) as caught:
        gateway.attach_default_payment_method("cus_1", "pm_1")
    assert caught.value.code == "card_declined"

    for error, expected in ((missing, StripeObjectNotFoundError), (down, GatewayUnavailableError)):
        gateway, _ = stripe_gateway({"subscriptions.retrieve": error})
        with pytest.raises(expected):
            gateway.retrieve_subscription("sub_1")


def test_an_invoice_sent_with_no_days_to_pay_makes_its_subscription_past_due_until_paid(
    gateway: StripeGateway, plans: dict[str, StripePriceData]
) -> None:
    customer = gateway.create_customer("billing@example.org", metadata={"tollgate_group_id": "g"})
    created = gateway.create_subscription(
        customer.id,
        plans["yearly"].id,
        quantity=3,
        collection_method="send_invoice",
        days_until_due=0,
    )
    assert created.latest_invoice_id is not None
    assert wait_for(lambda: gateway.retrieve_subscription(created.id).status == "past_due")
    gateway.fund_bank_transfer(customer.id, 27000, "eur", reference=created.latest_invoice_id)
    assert gateway.retrieve_subscription(created.id).status == "active"
