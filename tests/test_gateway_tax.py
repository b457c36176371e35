"""The gateway's Tax Rates in the real-Stripe dialect (against the recording fake client)."""

from __future__ import annotations

from decimal import Decimal

from tests.test_gateway import NOW, STRIPE_SUBSCRIPTION, stripe_gateway

TAX_RATE = {
    "id": "txr_1",
    "object": "tax_rate",
    "display_name": "VAT",
    "percentage": 7.0,
    "inclusive": True,
    "active": True,
    "country": "DE",
    "tax_type": "vat",
    "metadata": {"tollgate_app": "tollgate", "tollgate_country": "DE", "tollgate_rate": "7"},
}


def test_on_stripe_a_vat_tax_rate_names_its_country_and_tax_type() -> None:
    gateway, client = stripe_gateway({"tax_rates.create": TAX_RATE})

    created = gateway.create_tax_rate(Decimal("7"), "de", idempotency_key="k-1")

    (name, (params, options)) = client.calls[0]
    assert name == "tax_rates.create"
    assert params == {
        "display_name": "VAT",
        "percentage": "7",
        "inclusive": True,
        "description": "VAT DE 7% (e-newspapers)",
        "metadata": {"tollgate_app": "tollgate", "tollgate_country": "DE", "tollgate_rate": "7"},
        "country": "DE",
        "tax_type": "vat",
    }
    assert options == {"idempotency_key": "k-1"}
    assert (created.id, created.country, created.percentage, created.inclusive) == (
        "txr_1",
        "DE",
        Decimal("7.0"),
        True,
    )


def test_on_stripe_an_invoices_tax_rates_come_from_its_total_taxes() -> None:
    invoice = {
        "id": "in_1",
        "customer": {"id": "cus_1", "metadata": {"tollgate_app": "tollgate"}},
        "status": "paid",
        "currency": "eur",
        "subtotal": 1200,
        "total": 1200,
        "total_excluding_tax": 1121,
        "created": NOW,
        "total_taxes": [
            {
                "amount": 79,
                "tax_behavior": "inclusive",
                "type": "tax_rate_details",
                "tax_rate_details": {"tax_rate": "txr_1"},
            }
        ],
    }
    gateway, _client = stripe_gateway({"invoices.retrieve": invoice})

    data = gateway.retrieve_invoice("in_1")

    assert (data.tax, data.tax_rate_ids, data.total_excluding_tax) == (79, ("txr_1",), 1121)


def test_on_stripe_a_subscriptions_tax_rates_are_set_and_cleared_by_default_tax_rates() -> None:
    taxed = {**STRIPE_SUBSCRIPTION, "default_tax_rates": [TAX_RATE]}
    gateway, client = stripe_gateway({"subscriptions.update": taxed})

    moved = gateway.set_subscription_tax_rates("sub_1", ["txr_1"])
    gateway.set_subscription_tax_rates("sub_1", [])

    assert client.calls[0] == ("subscriptions.update", ("sub_1", {"default_tax_rates": ["txr_1"]}))
    assert client.calls[1] == ("subscriptions.update", ("sub_1", {"default_tax_rates": ""}))
    assert moved.tax_rate_ids == ("txr_1",)
