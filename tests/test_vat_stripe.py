"""VAT for real on localstripe: a reader in every member state, monthly and yearly, pays the plan's
price with the right VAT inside, to the cent, and the mirror holds the same; country evidence,
moving country, a rate change on its date, refunds and reverse charge."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import AuditLog, Customer, Invoice, Plan, Reader, Refund, Subscription, TaxRate
from billing.services import groups, payments, stripe_mirror, taxes
from billing.services.vat import (
    EU_MEMBER_STATES,
    REVERSE_CHARGE_MENTION,
    RateRow,
    RateTable,
    TaxKind,
    ViesResult,
    rate_table,
)
from tests import factories
from tests.conftest import real_now
from tests.payments_support import (
    FRENCH_CARD,
    GERMAN_CARD,
    expected_tax,
    ministry_group,
    only_subscription,
    reader_with_card,
    subscribed_reader,
)
from tests.stripe_server import LocalstripeServer

pytestmark = [pytest.mark.usefixtures("stripe", "publisher_in_belgium"), pytest.mark.wall_clock]

MONTHLY, YEARLY = "individual-monthly", "individual-yearly"
BELGIAN_CARD = "4000000560000004"


def german_reader(
    session: Session, gateway: StripeGateway, stripe: LocalstripeServer, clock: FixedClock
) -> tuple[Reader, Customer]:
    """A reader in Germany with a German card saved, and their customer."""
    reader = reader_with_card(
        session, gateway, stripe, clock.now(), number=GERMAN_CARD, country="DE"
    )
    customer = stripe_mirror.customer_of(session, reader)
    assert customer is not None
    return reader, customer


def latest_invoice(session: Session) -> Invoice:
    """The newest mirrored invoice, fresh from the database."""
    session.expire_all()
    return session.scalars(select(Invoice).order_by(Invoice.id.desc())).first()  # type: ignore[return-value]


@pytest.mark.parametrize("plan_code", [MONTHLY, YEARLY])
@pytest.mark.parametrize("country", sorted(EU_MEMBER_STATES))
def test_a_reader_in_each_member_state_pays_the_plan_price_with_its_vat_inside(
    country: str,
    plan_code: str,
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    plan = plans[plan_code]
    rate = rate_table().rate_on(country, clock.now().date())

    subscribed_reader(session, gateway, stripe, clock, country, plan_code)

    mirrored = latest_invoice(session)
    on_stripe = gateway.retrieve_invoice(mirrored.stripe_id)
    vat = expected_tax(plan.amount, rate)
    assert (on_stripe.total, on_stripe.tax, on_stripe.amount_paid) == (
        plan.amount,
        vat,
        plan.amount,
    )
    assert on_stripe.total_excluding_tax == plan.amount - vat
    assert (mirrored.total, mirrored.tax, mirrored.net) == (plan.amount, vat, plan.amount - vat)
    assert mirrored.amount_paid == plan.amount
    assert (mirrored.tax_rate, mirrored.tax_country) == (rate, country)
    assert mirrored.tax_kind == (TaxKind.DOMESTIC if country == "BE" else TaxKind.OSS)
    assert not mirrored.reverse_charge
    assert mirrored.tax_evidence == {
        "declared_country": country,
        "card_country": "BE",
        "agrees": country == "BE",
        "confirmed_by_reader": country != "BE",
    }
    rates = session.scalars(select(TaxRate)).all()
    assert [(r.country, Decimal(r.percentage), r.inclusive) for r in rates] == [
        (country, rate, True)
    ]
    assert only_subscription(session).tax_rate_id == rates[0].id


def test_readers_in_germany_and_belgium_pay_the_same_price_with_different_vat(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    subscribed_reader(session, gateway, stripe, clock, "DE", MONTHLY, card=GERMAN_CARD)
    german = latest_invoice(session)
    subscribed_reader(
        session, gateway, stripe, clock, "BE", MONTHLY, card=BELGIAN_CARD, email="b@example.org"
    )
    belgian = latest_invoice(session)

    assert german.total == belgian.total == 1200
    assert (german.tax, german.tax_rate, german.tax_kind) == (79, Decimal("7"), "oss")
    assert (belgian.tax, belgian.tax_rate, belgian.tax_kind) == (0, Decimal("0"), "domestic")
    assert german.tax_evidence == {
        "declared_country": "DE",
        "card_country": "DE",
        "agrees": True,
        "confirmed_by_reader": False,
    }
    assert belgian.tax_evidence is not None and belgian.tax_evidence["card_country"] == "BE"


def test_a_tax_rate_is_created_once_per_country_and_rate_and_reused(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    subscribed_reader(session, gateway, stripe, clock, "DE", MONTHLY, card=GERMAN_CARD)
    subscribed_reader(
        session, gateway, stripe, clock, "DE", YEARLY, card=GERMAN_CARD, email="b@example.org"
    )

    ours = [rate for rate in gateway.list_tax_rates() if gateway.is_ours(rate)]
    assert [(r.country, r.percentage, r.inclusive) for r in ours] == [("DE", Decimal("7"), True)]
    assert len(session.scalars(select(TaxRate)).all()) == 1


def test_disagreeing_evidence_stops_until_the_reader_confirms_their_country(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    now = clock.now()
    reader = reader_with_card(session, gateway, stripe, now, number=FRENCH_CARD, country="DE")
    customer = stripe_mirror.customer_of(session, reader)
    assert customer is not None and customer.card_country == "FR"

    with pytest.raises(taxes.CountryUnconfirmed) as refused:
        taxes.record_country_evidence(session, gateway, customer, "DE", confirmed=False, now=now)
    assert refused.value.field == "country"
    assert "issued in FR" in refused.value.message
    assert customer.declared_country is None

    taxes.record_country_evidence(session, gateway, customer, "DE", confirmed=True, now=now)
    payments.subscribe(session, gateway, reader, MONTHLY, now=now)
    session.commit()

    invoice = latest_invoice(session)
    assert invoice.tax_evidence == {
        "declared_country": "DE",
        "card_country": "FR",
        "agrees": False,
        "confirmed_by_reader": True,
    }
    assert (invoice.tax_country, invoice.tax) == ("DE", 79)
    stored = session.get_one(Customer, customer.id)
    assert (stored.declared_country, stored.card_country, stored.country_confirmed_at) == (
        "DE",
        "FR",
        now,
    )
    assert gateway.retrieve_customer(customer.stripe_id).country == "DE"
    actions = session.scalars(select(AuditLog.action)).all()
    assert "vat.country_confirmed" in actions


def test_a_reader_who_moves_country_is_taxed_at_the_new_rate_from_the_next_period(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
    runner: FlaskCliRunner,
) -> None:
    reader = subscribed_reader(session, gateway, stripe, clock, "DE", MONTHLY, card=GERMAN_CARD)
    first = latest_invoice(session)
    customer = stripe_mirror.customer_of(session, reader)
    assert customer is not None

    taxes.record_country_evidence(session, gateway, customer, "FR", confirmed=True, now=clock.now())
    session.commit()
    result = runner.invoke(args=["billing", "tick", "--now", clock.now().isoformat()])

    assert result.exit_code == 0, result.output
    assert "1 subscription(s) moved to a new VAT rate" in result.output
    assert "(FR) 7% -> 2.1% from its next invoice" in result.output
    subscription = only_subscription(session)
    french = session.get_one(TaxRate, subscription.tax_rate_id)
    assert (french.country, Decimal(french.percentage)) == ("FR", Decimal("2.1"))
    assert gateway.retrieve_subscription(subscription.stripe_id).tax_rate_ids == (french.stripe_id,)
    upcoming = gateway.preview_next_invoice(customer.stripe_id, subscription.stripe_id)
    assert (upcoming.total, upcoming.tax) == (1200, expected_tax(1200, Decimal("2.1")))
    assert upcoming.tax_rate_ids == (french.stripe_id,)
    session.expire_all()
    assert (session.get_one(Invoice, first.id).tax, first.tax_country) == (79, "DE")
    again = runner.invoke(args=["billing", "tick", "--now", clock.now().isoformat()])
    assert "0 subscription(s) moved to a new VAT rate" in again.output


def test_a_rate_change_applies_from_its_date_to_each_subscriptions_next_period(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    subscribed_reader(session, gateway, stripe, clock, "DE", YEARLY, card=GERMAN_CARD)
    subscription = only_subscription(session)
    change_on = clock.now().date() + timedelta(days=10)
    table = rate_table()
    changed = RateTable(
        rows=(*table.rows, RateRow("DE", change_on, Decimal("5"), Decimal("19"), "test: a cut")),
        covers_from=table.covers_from,
        checked_on=table.checked_on,
        source=table.source,
    )
    settings = dataclasses.replace(taxes.current_settings(), table=changed)

    before = taxes.apply_rate_changes(
        session, gateway, now=clock.now() + timedelta(days=9), settings=settings
    )
    on_the_day = taxes.apply_rate_changes(
        session, gateway, now=clock.now() + timedelta(days=10), settings=settings
    )
    session.commit()

    assert before == []
    assert [(c.before, c.after, c.country) for c in on_the_day] == [
        (Decimal("7"), Decimal("5"), "DE")
    ]
    upcoming = gateway.preview_next_invoice(subscription.customer.stripe_id, subscription.stripe_id)
    assert (upcoming.total, upcoming.tax) == (12000, expected_tax(12000, Decimal("5")))
    assert latest_invoice(session).tax == expected_tax(12000, Decimal("7"))


def test_a_refund_carries_its_vat_back_dated_at_the_refund(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    subscribed_reader(session, gateway, stripe, clock, "DE", YEARLY, card=GERMAN_CARD)
    invoice = latest_invoice(session)

    half = gateway.refund_invoice(invoice.stripe_id, amount=6000)
    assert half.charge_id is not None
    stripe_mirror.sync_charge_refunds(session, gateway, half.charge_id, now=clock.now())
    session.commit()
    rest = gateway.refund_invoice(invoice.stripe_id)
    stripe_mirror.sync_charge_refunds(session, gateway, half.charge_id, now=clock.now())
    session.commit()

    session.expire_all()
    refunds = {r.stripe_id: r for r in session.scalars(select(Refund))}
    assert invoice.tax == expected_tax(12000, Decimal("7")) == 785
    assert refunds[half.id].tax == expected_tax(6000, Decimal("7")) == 393
    assert refunds[rest.id].tax == 785 - 393  # the refund completing the total: what VAT is left
    assert (refunds[half.id].created_at, refunds[rest.id].created_at) == (
        half.created,
        rest.created,
    )
    assert session.get_one(Invoice, invoice.id).amount_refunded == 12000


def test_an_organisation_with_a_foreign_vat_id_is_reverse_charged(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    now = clock.now()
    reader, customer = german_reader(session, gateway, stripe, clock)
    treatment = taxes.business_treatment(
        "DE", "DE 136 695 976", now=now, settings=taxes.current_settings()
    )
    customer.vat_id = treatment.vat_id
    taxes.record_country_evidence(session, gateway, customer, "DE", confirmed=False, now=now)

    payments.subscribe(session, gateway, reader, YEARLY, now=now)
    session.commit()

    assert treatment.mention == REVERSE_CHARGE_MENTION
    invoice = latest_invoice(session)
    assert (invoice.total, invoice.tax, invoice.net) == (12000, 0, 12000)
    assert (invoice.tax_kind, invoice.reverse_charge) == ("reverse_charge", True)
    assert (invoice.tax_rate, invoice.tax_country) == (Decimal(0), "DE")
    assert only_subscription(session).tax_rate_id is None
    assert gateway.retrieve_subscription(only_subscription(session).stripe_id).tax_rate_ids == ()


def test_an_organisation_in_the_publishers_country_pays_domestic_vat(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    treatment = taxes.business_treatment(
        "BE", "BE 0411.905.847", now=clock.now(), settings=taxes.current_settings()
    )

    assert (treatment.kind, treatment.rate, treatment.vat_id) == (
        TaxKind.DOMESTIC,
        rate_table().rate_on("BE", clock.now().date()),
        "BE0411905847",
    )
    assert not treatment.reverse_charge


def test_every_subscription_kept_at_the_right_rate_needs_no_change(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    subscribed_reader(session, gateway, stripe, clock, "IT", MONTHLY)

    changes = taxes.apply_rate_changes(
        session, gateway, now=clock.now(), settings=taxes.current_settings()
    )

    assert changes == []
    assert session.scalars(select(Subscription.tax_rate_id)).one() is not None


def test_sync_tax_rates_creates_every_member_states_rate_once(
    app: Flask, session: Session, gateway: StripeGateway, runner: FlaskCliRunner
) -> None:
    first = runner.invoke(args=["billing", "sync-tax-rates"])
    again = runner.invoke(args=["billing", "sync-tax-rates"])

    assert first.exit_code == 0, first.output
    assert "Tax rates synced: 27 member states." in first.output
    assert "  FR: 2.1% (tax rate txr_" in first.output
    assert again.exit_code == 0
    ours = [rate for rate in gateway.list_tax_rates() if gateway.is_ours(rate)]
    assert len(ours) == 27 == len(session.scalars(select(TaxRate)).all())
    assert {(r.country, r.percentage) for r in ours} == {
        (country, rate_table().rate_on(country, real_now().date())) for country in EU_MEMBER_STATES
    }
    assert all(rate.inclusive for rate in ours)


def test_an_organisation_whose_vat_id_vies_rejects_pays_its_countrys_vat(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    now = clock.now()
    reader, customer = german_reader(session, gateway, stripe, clock)
    rejected = taxes.TaxTreatment(
        TaxKind.OSS,
        "DE",
        Decimal("7"),
        vat_id="DE136695976",
        vies=ViesResult("DE136695976", False, now),
    )
    taxes.record_business_treatment(customer, rejected)
    taxes.record_country_evidence(session, gateway, customer, "DE", confirmed=False, now=now)

    payments.subscribe(session, gateway, reader, MONTHLY, now=now)
    session.commit()

    stored = session.get_one(Customer, customer.id)
    assert (stored.vat_id, stored.vies_valid, stored.vies_checked_at) == ("DE136695976", False, now)
    invoice = latest_invoice(session)
    assert (invoice.tax, invoice.tax_kind, invoice.reverse_charge) == (79, "oss", False)


class _RacingGateway:
    """The gateway, but another process stores the Tax Rate while we ask Stripe for it."""

    def __init__(self, gateway: StripeGateway, app: Flask, now: Any) -> None:
        self._gateway = gateway
        self._app = app
        self._now = now

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)

    def list_tax_rates(self) -> Any:
        other = self._app.extensions["db_sessionmaker"]()
        try:
            taxes.ensure_tax_rate(other, self._gateway, "DE", Decimal("7"), now=self._now)
            other.commit()
        finally:
            other.close()
        return self._gateway.list_tax_rates()


def test_a_tax_rate_stored_meanwhile_by_another_transaction_is_the_one_used(
    app: Flask, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    racing = _RacingGateway(gateway, app, clock.now())

    rate = taxes.ensure_tax_rate(session, racing, "de", Decimal("7.0"), now=clock.now())  # type: ignore[arg-type]
    session.commit()

    assert (rate.country, Decimal(rate.percentage)) == ("DE", Decimal("7"))
    assert len(session.scalars(select(TaxRate)).all()) == 1
    assert [r.id for r in gateway.list_tax_rates() if gateway.is_ours(r)] == [rate.stripe_id]


@pytest.mark.parametrize(
    ("country", "vat_id", "tax_exempt"),
    [
        ("DE", "DE 136 695 976", "reverse"),  # a VAT number of another member state
        ("BE", "BE 0411.905.847", "none"),  # the publisher's own country: domestic VAT
        ("DE", "", "none"),  # no VAT number: taxed like a consumer in Germany
    ],
)
def test_an_organisations_stripe_customer_is_tax_exempt_reverse_only_when_reverse_charged(
    app: Flask,
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
    country: str,
    vat_id: str,
    tax_exempt: str,
) -> None:
    admin = factories.reader(email="boss@ministry.example")
    session.flush()

    group = ministry_group(
        session,
        gateway,
        admin,
        country=country,
        vat_id=vat_id,
        by_invoice=False,
        rules=groups.GroupRules.from_config(app.config),
        now=clock.now(),
    )
    session.commit()

    customer = session.scalars(select(Customer).where(Customer.group_id == group.id)).one()
    assert gateway.retrieve_customer(customer.stripe_id).tax_exempt == tax_exempt
