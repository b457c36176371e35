"""The reader's payment pages with the real payments service, against localstripe.

The card form's browser half (Stripe.js confirming a SetupIntent) is played by the
:class:`~tests.stripe_server.LocalstripeServer` helpers: they make the payment method the form posts.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import (
    AuditLog,
    BillingInterval,
    Invoice,
    InvoiceStatus,
    Plan,
    PlanKind,
    Reader,
    ScheduledSubscription,
)
from billing.views.payments import money
from tests import factories
from tests.conftest import Outbox, csrf_token, post_form
from tests.helpers import login
from tests.payments_support import DECLINED_ON_CHARGE, VISA
from tests.stripe_server import LocalstripeServer

MONTHLY = "individual-monthly"
YEARLY = "individual-yearly"

pytestmark = [pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]


@pytest.fixture
def plans(app: Flask, gateway: StripeGateway, session: Session) -> dict[str, Plan]:
    """The individual monthly (EUR 12.00) and yearly (EUR 120.00) plans, in localstripe and mirrored."""
    return create_plans(gateway, session)


def create_plans(gateway: StripeGateway, session: Session) -> dict[str, Plan]:
    """Put the individual monthly and yearly plans on sale in localstripe and mirror them (committed)."""
    product = gateway.create_product("Tollgate digital")
    made = {}
    for code, name, interval, amount in (
        (MONTHLY, "Monthly", BillingInterval.MONTH, 1200),
        (YEARLY, "Yearly", BillingInterval.YEAR, 12000),
    ):
        price = gateway.create_price(
            product.id, amount=amount, currency="eur", interval=interval.value, plan_code=code
        )
        made[code] = Plan(
            code=code,
            name=name,
            kind=PlanKind.INDIVIDUAL,
            interval=interval,
            amount=amount,
            currency="eur",
            stripe_product_id=product.id,
            stripe_price_id=price.id,
        )
        session.add(made[code])
    session.commit()
    return made


@pytest.fixture
def reader(app: Flask, session: Session, clock: FixedClock) -> Reader:
    """A verified reader without a trial (as if it had never been taken), committed."""
    created = factories.reader(
        email="rita@example.org", name="Rita Reader", created_at=clock.now() - timedelta(days=40)
    )
    session.commit()
    return created


@pytest.fixture
def client(app: Flask, reader: Reader, plans: dict[str, Plan]) -> FlaskClient:
    """A browser in which ``reader`` is logged in, with the plans on sale."""
    browser = app.test_client()
    login(browser, reader)
    return browser


def page_text(response: Any) -> str:
    """The response body with tags removed and white space collapsed, as a reader reads it."""
    html = response.get_data(as_text=True)
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def long_date(moment: datetime) -> str:
    """``9 December 2026``."""
    return f"{moment.day} {moment:%B %Y}"


def subscribe(
    client: FlaskClient, stripe: LocalstripeServer, plan: str = MONTHLY, card: str = VISA
) -> Any:
    """Subscribe through the form with a card saved as Stripe.js would have saved it."""
    payment_method = stripe.create_card(card)
    return post_form(client, "/subscribe", {"plan": plan, "payment_method": payment_method})


def confirm(client: FlaskClient, path: str, **data: str) -> Any:
    """Press the confirmation button of ``path``."""
    return post_form(client, path, data)


def preview_moment(client: FlaskClient) -> str:
    """The proration moment the switch page's form carries (the preview shown)."""
    page = client.get("/account/subscription/switch").get_data(as_text=True)
    found = re.search(r'name="proration_date" type="hidden" value="(\d+)"', page)
    assert found, "the switch form carries its preview's moment"
    return found.group(1)


def audit_actions(session: Session) -> list[str]:
    """The audit log's actions, oldest first."""
    session.expire_all()
    return list(session.scalars(select(AuditLog.action).order_by(AuditLog.id)))


# Pages -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/subscribe", "/account", "/account/card", "/account/invoices"])
def test_every_payment_page_renders_for_a_reader_without_a_subscription(
    client: FlaskClient, path: str
) -> None:
    assert client.get(path).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/account",
        "/account/card",
        "/account/invoices",
        "/subscribe/done",
        "/account/subscription/cancel",
        "/account/subscription/switch",
    ],
)
def test_every_payment_page_renders_for_a_subscribed_reader(
    client: FlaskClient, stripe: LocalstripeServer, path: str
) -> None:
    assert subscribe(client, stripe).status_code == 302
    assert client.get(path).status_code == 200


def test_the_subscribe_page_shows_both_prices_the_vat_note_and_the_card_form(
    client: FlaskClient, app: Flask
) -> None:
    response = client.get("/subscribe")
    html = response.get_data(as_text=True)
    text = page_text(response)

    assert "Monthly — €12.00 a month" in text
    assert "Yearly — €120.00 a year" in text
    assert "Prices include VAT where it applies." in text
    assert "<legend>Choose your plan</legend>" in html
    assert 'name="csrf-token"' in html
    assert f'src="{app.config["STRIPE_JS_URL"]}"' in html
    assert "/static/js/subscribe.js" in html
    assert 'aria-live="assertive"' in html
    assert "<script>" not in html, "the CSP forbids inline scripts"


def test_the_subscribe_pages_ask_a_guest_to_log_in_first(app: Flask, plans: Any) -> None:
    response = app.test_client().get("/subscribe")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_a_reader_with_a_subscription_is_sent_from_subscribe_to_the_account_page(
    client: FlaskClient, stripe: LocalstripeServer
) -> None:
    subscribe(client, stripe)
    response = client.get("/subscribe")
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/account")


# Subscribing -----------------------------------------------------------------------------------


def test_subscribing_without_a_card_is_refused_next_to_the_card_field(
    client: FlaskClient,
) -> None:
    response = post_form(client, "/subscribe", {"plan": MONTHLY, "payment_method": ""})

    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert re.search(
        r'id="card-errors" data-field="payment_method"[^>]*>Enter your card details', html
    )


def test_subscribing_to_an_unknown_plan_is_refused_next_to_the_plans(
    client: FlaskClient, stripe: LocalstripeServer
) -> None:
    response = subscribe(client, stripe, plan="platinum")

    assert response.status_code == 400
    assert 'data-field="plan">Choose monthly or yearly.' in response.get_data(as_text=True)


def test_the_setup_intent_endpoint_gives_the_page_a_client_secret(client: FlaskClient) -> None:
    page = client.get("/subscribe").get_data(as_text=True)
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert token

    response = client.post(
        "/subscribe/setup-intent",
        headers={"X-CSRFToken": token.group(1), "Accept": "application/json"},
    )

    assert response.status_code == 200
    assert response.get_json()["client_secret"].startswith("seti_")


def test_subscribing_with_a_saved_card_starts_the_subscription_and_the_account_shows_it_active(
    client: FlaskClient, stripe: LocalstripeServer, session: Session, clock: FixedClock
) -> None:
    response = subscribe(client, stripe)

    assert response.status_code == 302
    assert response.headers["Location"].endswith("/subscribe/done")
    done = page_text(client.get("/subscribe/done"))
    assert "Thank you for subscribing" in done
    assert "Monthly — €12.00 a month" in done
    account = client.get("/account")
    text = page_text(account)
    assert "Status Active" in text
    assert "Visa ending in 4242" in text
    assert 'data-reason="subscription"' in account.get_data(as_text=True)
    assert "Your last payment failed" not in text
    assert any(action.startswith("subscription.") for action in audit_actions(session))


def test_during_a_trial_the_confirmation_gives_the_first_charge_date_and_nothing_is_charged(
    client: FlaskClient,
    stripe: LocalstripeServer,
    reader: Reader,
    session: Session,
    clock: FixedClock,
    gateway: StripeGateway,
) -> None:
    trial = factories.TrialFactory(reader=reader, started_at=clock.now() - timedelta(days=2))
    session.commit()
    trial_end = long_date(trial.ends_at)
    assert f"Your free trial runs until {trial_end}" in page_text(client.get("/subscribe"))

    response = subscribe(client, stripe)

    assert response.status_code == 302
    done = page_text(client.get("/subscribe/done"))
    assert (
        f"Your free trial runs until {trial_end}. "
        f"Your card will first be charged €12.00 on {trial_end}."
    ) in done
    assert f"Starts on {trial_end}" in page_text(client.get("/account"))
    session.expire_all()
    scheduled = session.scalars(select(ScheduledSubscription)).one()
    assert scheduled.started_at is None
    assert session.scalar(select(func.count()).select_from(Invoice)) == 0
    assert gateway.list_invoices(customer_id=scheduled.customer.stripe_id) == []


def test_a_failed_first_payment_shows_the_banner_and_a_new_card_pays_it(
    client: FlaskClient, stripe: LocalstripeServer
) -> None:
    response = subscribe(client, stripe, card=DECLINED_ON_CHARGE)
    assert response.status_code == 402

    account = client.get("/account")
    text = page_text(account)
    assert "Your last payment failed. Update your card to keep reading." in text
    assert 'href="/account/card"' in account.get_data(as_text=True)
    assert "Status Payment failed" in text

    fixed = post_form(client, "/account/card", {"payment_method": stripe.create_card(VISA)})

    assert fixed.status_code == 302
    text = page_text(client.get("/account"))
    assert "Your last payment failed" not in text
    assert "Status Active" in text


def test_after_a_declined_first_payment_the_subscribe_page_takes_another_card_and_pays(
    client: FlaskClient, stripe: LocalstripeServer
) -> None:
    declined = subscribe(client, stripe, card=DECLINED_ON_CHARGE)
    assert declined.status_code == 402
    html = declined.get_data(as_text=True)
    assert re.search(r'id="card-errors" data-field="payment_method"[^>]*>[^<]*declined', html)
    assert "is set up and waits for its first payment" in page_text(declined)
    assert client.get("/subscribe").status_code == 302

    token = csrf_token(client, "/account/card")
    another = stripe.create_card(VISA)
    paid = client.post(
        "/subscribe", data={"plan": MONTHLY, "payment_method": another, "csrf_token": token}
    )

    assert paid.status_code == 302
    assert paid.headers["Location"].endswith("/subscribe/done")
    assert "Status Active" in page_text(client.get("/account"))


def test_updating_the_card_without_one_is_refused_next_to_the_card_field(
    client: FlaskClient,
) -> None:
    response = post_form(client, "/account/card", {"payment_method": ""})

    assert response.status_code == 400
    assert 'data-field="payment_method"' in response.get_data(as_text=True)


def test_a_reader_updates_their_card_and_the_account_shows_the_new_one(
    client: FlaskClient, stripe: LocalstripeServer
) -> None:
    subscribe(client, stripe)
    mastercard = stripe.create_card("5555555555554444")

    response = post_form(client, "/account/card", {"payment_method": mastercard})

    assert response.status_code == 302
    text = page_text(client.get("/account"))
    assert "ending in 4444" in text  # localstripe calls every card a Visa
    assert "ending in 4242" not in text


# Managing the subscription ---------------------------------------------------------------------


def test_a_reader_cancels_after_confirming_and_keeps_access_until_the_period_ends(
    client: FlaskClient, stripe: LocalstripeServer, session: Session
) -> None:
    subscribe(client, stripe)
    question = client.get("/account/subscription/cancel")
    assert "Yes, cancel my subscription" in page_text(question)

    response = confirm(client, "/account/subscription/cancel")

    assert response.status_code == 302
    account = client.get("/account")
    text = page_text(account)
    match = re.search(r"Cancelled — access until (\d{1,2} \w+ \d{4})", text)
    assert match, text
    assert "Resume my subscription" in text
    assert 'data-reason="grace_period"' in account.get_data(as_text=True)
    assert "subscription.cancel" in " ".join(audit_actions(session))


def test_a_cancelled_reader_resumes_before_the_period_ends(
    client: FlaskClient, stripe: LocalstripeServer
) -> None:
    subscribe(client, stripe)
    confirm(client, "/account/subscription/cancel")
    assert "Yes, resume my subscription" in page_text(client.get("/account/subscription/resume"))

    response = confirm(client, "/account/subscription/resume")

    assert response.status_code == 302
    text = page_text(client.get("/account"))
    assert "Status Active" in text
    assert "Cancelled" not in text


def test_a_reader_switches_from_monthly_to_yearly_after_confirming(
    client: FlaskClient, stripe: LocalstripeServer
) -> None:
    subscribe(client, stripe)
    question = page_text(client.get("/account/subscription/switch"))
    assert "After the switch you pay €120.00 a year" in question

    response = confirm(
        client, "/account/subscription/switch", plan=YEARLY, proration_date=preview_moment(client)
    )

    assert response.status_code == 302
    text = page_text(client.get("/account"))
    assert "Plan Yearly — €120.00 a year" in text
    assert "Switch to monthly" in text


def test_a_second_click_on_the_same_switch_says_nothing_changed_and_mails_nothing(
    client: FlaskClient, stripe: LocalstripeServer, outbox: Outbox
) -> None:
    subscribe(client, stripe)
    moment = preview_moment(client)
    confirm(client, "/account/subscription/switch", plan=YEARLY, proration_date=moment)
    mails = len(outbox.all())

    again = confirm(client, "/account/subscription/switch", plan=YEARLY, proration_date=moment)

    assert again.status_code == 302
    text = page_text(client.get("/account"))
    assert "You are already on the yearly plan: nothing changed." in text
    assert "We mailed you the details" not in text
    assert len(outbox.all()) == mails


def test_a_switch_whose_payment_is_declined_is_kept_and_the_account_shows_the_banner(
    client: FlaskClient, stripe: LocalstripeServer
) -> None:
    subscribe(client, stripe)
    post_form(client, "/account/card", {"payment_method": stripe.create_card(DECLINED_ON_CHARGE)})

    response = confirm(
        client, "/account/subscription/switch", plan=YEARLY, proration_date=preview_moment(client)
    )

    assert response.status_code == 302
    text = page_text(client.get("/account"))
    assert "Your plan is switched, but its payment did not go through." in text
    assert "Your last payment failed. Update your card to keep reading." in text
    assert "Plan Yearly" in text
    assert "Switch to monthly" not in text


def test_a_switch_confirmed_from_a_stale_or_missing_preview_is_shown_again_as_of_now(
    client: FlaskClient, stripe: LocalstripeServer, clock: FixedClock
) -> None:
    subscribe(client, stripe)
    shown = preview_moment(client)
    clock.advance(timedelta(hours=1))

    stale = confirm(client, "/account/subscription/switch", plan=YEARLY, proration_date=shown)
    missing = confirm(client, "/account/subscription/switch", plan=YEARLY)
    forged = confirm(client, "/account/subscription/switch", plan=YEARLY, proration_date="1e9")
    huge = confirm(client, "/account/subscription/switch", plan=YEARLY, proration_date="9" * 40)

    assert stale.status_code == 409
    assert "The price shown is out of date" in page_text(stale)
    assert f'value="{int(clock.now().timestamp())}"' in stale.get_data(as_text=True)
    for refused in (missing, forged, huge):
        assert refused.status_code == 400
        assert "This switch was not previewed" in page_text(refused)
    assert "Plan Monthly" in page_text(client.get("/account")), "nothing was switched"


def test_a_trial_reader_calls_off_the_scheduled_subscription(
    client: FlaskClient,
    stripe: LocalstripeServer,
    reader: Reader,
    session: Session,
    clock: FixedClock,
) -> None:
    factories.TrialFactory(reader=reader, started_at=clock.now() - timedelta(days=2))
    session.commit()
    subscribe(client, stripe)
    assert "it will not start" in page_text(client.get("/account/subscription/cancel"))

    response = confirm(client, "/account/subscription/cancel")

    assert response.status_code == 302
    assert "You have no subscription." in page_text(client.get("/account"))


def test_actions_without_a_subscription_are_refused_as_conflicts(client: FlaskClient) -> None:
    for path in ("/account/subscription/cancel", "/account/subscription/resume"):
        assert client.get(path).status_code == 409
    assert client.get("/account/subscription/switch").status_code == 409


# Invoices --------------------------------------------------------------------------------------


def test_the_invoices_page_lists_the_first_invoice_with_its_amount(
    client: FlaskClient, stripe: LocalstripeServer
) -> None:
    subscribe(client, stripe)

    response = client.get("/account/invoices")

    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert re.search(r"<td data-amount>€12\.00", html)
    assert "Paid" in page_text(response)


def test_invoices_come_twenty_a_page(
    client: FlaskClient, reader: Reader, session: Session, clock: FixedClock
) -> None:
    customer = factories.CustomerFactory(reader=reader)
    for number in range(25):
        session.add(
            Invoice(
                stripe_id=f"in_test{number}",
                number=f"TG-{number:04d}",
                customer_id=customer.id,
                status=InvoiceStatus.PAID,
                currency="eur",
                subtotal=1200,
                total=1200,
                amount_paid=1200,
                created_at=clock.now() - timedelta(days=number),
                hosted_invoice_url=f"https://invoice.example/{number}",
                invoice_pdf_url=f"https://invoice.example/{number}.pdf",
            )
        )
    session.commit()

    first = client.get("/account/invoices").get_data(as_text=True)
    second = client.get("/account/invoices?page=2").get_data(as_text=True)

    assert first.count("<tr data-invoice=") == 20
    assert second.count("<tr data-invoice=") == 5
    assert "TG-0000" in first and "TG-0024" in second
    assert 'href="https://invoice.example/0.pdf"' in first
    assert 'rel="next"' in first and 'rel="prev"' in second
    assert client.get("/account/invoices?page=3").status_code == 404


# Refusals --------------------------------------------------------------------------------------


def test_an_unverified_reader_is_refused_with_a_way_to_verify(
    client: FlaskClient, stripe: LocalstripeServer, reader: Reader, session: Session
) -> None:
    reader.email_verified_at = None
    session.commit()

    page = client.get("/subscribe")
    assert "Please verify your e-mail address first" in page_text(page)
    assert "Send the link again" in page_text(page)
    token = csrf_token(client, "/subscribe")
    payment_method = stripe.create_card(VISA)
    refused = client.post(
        "/subscribe", data={"plan": MONTHLY, "payment_method": payment_method, "csrf_token": token}
    )
    assert refused.status_code == 403
    intent = client.post(
        "/subscribe/setup-intent", headers={"X-CSRFToken": token, "Accept": "application/json"}
    )
    assert intent.status_code == 403
    assert intent.get_json()["error"]["code"] == "email_unverified"


def test_a_form_without_its_csrf_token_is_refused(
    client: FlaskClient, stripe: LocalstripeServer
) -> None:
    payment_method = stripe.create_card(VISA)

    assert (
        client.post("/subscribe", data={"plan": MONTHLY, "payment_method": payment_method})
    ).status_code == 400
    assert client.post("/subscribe/setup-intent").status_code == 400
    assert client.post("/account/subscription/cancel").status_code == 400


# Formatting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "written"),
    [
        (1200, "eur", "€12.00"),
        (12000, "EUR", "€120.00"),
        (123456, "eur", "€1,234.56"),
        (5, "gbp", "£0.05"),
        (-250, "eur", "-€2.50"),
        (990, "chf", "9.90 CHF"),
    ],
)
def test_money_is_written_with_its_currency_and_two_decimals(
    amount: int, currency: str, written: str
) -> None:
    assert money(amount, currency) == written


def test_a_payment_that_needs_3d_secure_gets_a_page_that_completes_it_in_the_browser(
    client: FlaskClient, stripe: LocalstripeServer, session: Session
) -> None:
    response = subscribe(client, stripe, card="4000008260003178")

    assert response.status_code == 200
    html = response.get_data(as_text=True)
    secret = re.search(r'data-client-secret="((pi_\w+)_secret_\w+)"', html)
    assert secret, html
    assert 'data-next-url="/subscribe/done"' in html
    assert "/static/js/subscribe.js" in html
    stripe.authenticate_payment_intent(secret.group(2), secret.group(1), success=False)

    done = client.get("/subscribe/done")

    assert done.status_code == 302
    assert done.headers["Location"].endswith("/subscribe")
    again = page_text(client.get("/subscribe"))
    assert "Your bank did not confirm the payment, so your subscription did not start." in again


def test_a_reader_who_came_from_the_paywall_is_offered_the_way_back_after_subscribing(
    client: FlaskClient, stripe: LocalstripeServer
) -> None:
    back = "/access?client=cli_x&return_to=https://news.example/article"
    path = f"/subscribe?next={quote(back)}"
    data = {"plan": MONTHLY, "payment_method": stripe.create_card(VISA)}
    response = client.post(path, data={**data, "csrf_token": csrf_token(client, path)})

    assert response.status_code == 302, response.headers["Location"]
    done = client.get(response.headers["Location"]).get_data(as_text=True)
    assert f'href="{escape(back)}">Continue reading' in done


def test_the_way_back_after_subscribing_never_leaves_the_site(
    client: FlaskClient, stripe: LocalstripeServer
) -> None:
    path = "/subscribe?next=//evil.example/"
    data = {"plan": MONTHLY, "payment_method": stripe.create_card(VISA)}
    response = client.post(path, data={**data, "csrf_token": csrf_token(client, path)})

    done = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "evil.example" not in done
    assert "Continue reading" not in done


def test_card_set_ups_are_rate_limited_against_card_testing(client: FlaskClient) -> None:
    client.application.config["RATELIMIT_CARD"] = "2 per minute"
    page = client.get("/subscribe").get_data(as_text=True)
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert token
    headers = {"X-CSRFToken": token.group(1), "Accept": "application/json"}

    statuses = [
        client.post("/subscribe/setup-intent", headers=headers).status_code for _ in range(3)
    ]

    assert statuses == [200, 200, 429]
