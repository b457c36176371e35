"""The stand-in's Tax Rates compute what Stripe documents: the VAT inside an inclusive price."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from billing.devstripe import CARD_COUNTRIES, install_stripe_tax_behaviour
from billing.devstripe_billing import invoice_lines
from billing.services.vat import inclusive_tax, rate_table


class _TaxRate:
    def __init__(self, percentage: float, inclusive: bool) -> None:
        self.id = "txr_test"
        self.percentage = percentage
        self.inclusive = inclusive


class _Invoice:
    tax_percent = None
    starting_balance = 0

    def __init__(self, amounts: list[int], rate: Any) -> None:
        self.subtotal = sum(amounts)
        self.total_tax_amounts = [rate._tax_amount(amount) for amount in amounts]


class _PaymentMethod:
    def __init__(self, number: str) -> None:
        self.type = "card"
        self._card_number = number
        self.card = {"country": "FR"}


def _resources() -> Any:
    """Stand-ins for the localstripe classes the behaviour is installed on."""
    resources = SimpleNamespace(
        TaxRate=type("TaxRate", (_TaxRate,), {}),
        Invoice=type("Invoice", (_Invoice,), {}),
        PaymentMethod=type("PaymentMethod", (_PaymentMethod,), {}),
    )
    install_stripe_tax_behaviour(resources, generic_card_country="BE")
    return resources


RESOURCES = _resources()
table_rates = st.sampled_from(sorted({row.rate for row in rate_table().rows}))


@given(amount=st.integers(min_value=0, max_value=10**8), rate=table_rates)
def test_an_inclusive_rate_takes_the_vat_out_of_the_price_and_adds_nothing(
    amount: int, rate: Decimal
) -> None:
    tax_rate = RESOURCES.TaxRate(float(rate), True)
    invoice = RESOURCES.Invoice([amount], tax_rate)

    assert tax_rate._tax_amount(amount)["amount"] == inclusive_tax(amount, rate)
    assert invoice.total == amount
    assert invoice.total_excluding_tax == amount - inclusive_tax(amount, rate)


@given(amount=st.integers(min_value=0, max_value=10**8), rate=table_rates)
def test_an_exclusive_rate_is_still_added_on_top(amount: int, rate: Decimal) -> None:
    tax_rate = RESOURCES.TaxRate(float(rate), False)
    invoice = RESOURCES.Invoice([amount], tax_rate)
    tax = tax_rate._tax_amount(amount)["amount"]

    assert invoice.total == amount + tax
    assert abs(Decimal(tax) - Decimal(amount) * rate / 100) <= Decimal("0.5")


def test_cards_get_the_issuing_country_of_stripes_test_card_or_the_generic_one() -> None:
    german = RESOURCES.PaymentMethod("4000002760000016")
    generic = RESOURCES.PaymentMethod("4242424242424242")

    assert german.card["country"] == "DE" == CARD_COUNTRIES["4000002760000016"]
    assert generic.card["country"] == "BE"


def _invoice_for_pdf() -> Any:
    return SimpleNamespace(
        number="TG-0001",
        status_transitions={"finalized_at": 1_700_000_000},
        date=1_700_000_000,
        lines=SimpleNamespace(_list=[SimpleNamespace(description="3 seats", amount=28800)]),
        currency="eur",
        subtotal=28800,
        tax=0,
        applied_credit=0,
        amount_due=28800,
        status="open",
    )


def test_the_invoice_of_a_customer_with_tax_exempt_reverse_says_reverse_charge_as_stripes_does() -> (
    None
):
    reverse = SimpleNamespace(name="Ministry", email="a@m.example", tax_exempt="reverse")
    plain = SimpleNamespace(name="Anna", email="anna@example.org", tax_exempt="none")

    assert "Reverse charge" in invoice_lines(_invoice_for_pdf(), reverse)
    assert "Reverse charge" not in invoice_lines(_invoice_for_pdf(), plain)
