"""Group pages against a real localstripe: buy seats by invoice and by card, invite, join."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import (
    AuditLog,
    CollectionMethod,
    Group,
    GroupDomain,
    Invoice,
    InvoiceStatus,
    Reader,
    StaffRole,
    Subscription,
    SubscriptionEvent,
    SubscriptionEventKind,
    SubscriptionStatus,
)
from billing.services import api_clients, groups
from billing.services.entitlements import Reason, decide
from tests import factories
from tests.conftest import Outbox, csrf_token, post_form
from tests.payments_support import VISA, order_group, plans_on_sale
from tests.stripe_server import LocalstripeServer

pytestmark = [pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]


@pytest.fixture
def gateway(app: object) -> StripeGateway:
    from flask import current_app

    return current_app.extensions["stripe_gateway"]  # type: ignore[no-any-return]


def _login(client: FlaskClient, email: str) -> None:
    response = post_form(client, "/login", {"email": email, "password": factories.PASSWORD})
    assert response.status_code == 302


def _confirm_seats(client: FlaskClient, show: str, seats: int) -> tuple[str, TestResponse]:
    """Ask the price of ``seats`` seats, then confirm the change shown; the page's signed
    confirmation value and the confirmation's response."""
    preview = post_form(client, f"{show}/seats", {"seats": str(seats)})
    assert preview.status_code == 200
    signed = _signed_quote(preview.get_data(as_text=True))
    confirmed = post_form(
        client, f"{show}/seats", {"seats": str(seats), "confirm": "yes", "quote": signed}
    )
    return signed, confirmed


def _signed_quote(page: str) -> str:
    """The signed value a seat-change preview's confirm form carries."""
    found = re.search(r'name="quote" type="hidden" value="([^"]+)"', page)
    assert found is not None, "no signed price on the page"
    return found.group(1)


ORDER = {
    "name": "Example Ministry",
    "billing_email": "accounts@ministry.example",
    "country": "DE",
    "vat_id": "DE 123 456 788",
    "seats": "3",
}


def test_an_organisation_orders_seats_by_invoice_sees_the_price_first_and_pays_by_transfer(
    client: FlaskClient, session: Session, gateway: StripeGateway
) -> None:
    plans_on_sale(session, gateway)
    admin = factories.reader(email="boss@ministry.example")
    session.commit()
    _login(client, admin.email)
    review = post_form(client, "/groups/new", {**ORDER, "payment": "invoice"})
    page = review.get_data(as_text=True)
    assert review.status_code == 200 and "data-quote" in page
    assert "288.00" in page
    assert session.scalars(select(Group)).first() is None  # nothing before confirming
    token = csrf_token(client, "/groups/new")
    done = client.post(
        "/groups/new", data={**ORDER, "payment": "invoice", "confirm": "yes", "csrf_token": token}
    )
    assert done.status_code == 302
    group = session.scalars(select(Group)).one()
    assert (group.vat_id, group.country) == ("DE123456788", "DE")
    subscription = session.scalars(select(Subscription)).one()
    assert subscription.status == SubscriptionStatus.ACTIVE
    assert subscription.collection_method == CollectionMethod.SEND_INVOICE
    assert subscription.quantity == 3
    invoice = session.scalars(select(Invoice)).one()
    assert invoice.status == InvoiceStatus.OPEN

    show = client.get(done.headers["Location"]).get_data(as_text=True)
    assert "1</strong> of <strong>3</strong> seats in use" in show
    paid = post_form(client, f"/groups/{group.public_id}", {}, follow_redirects=False)
    assert paid.status_code == 405
    path = f"/groups/{group.public_id}/dev/bank-transfer"
    response = client.post(
        path, data={"csrf_token": csrf_token(client, f"/groups/{group.public_id}")}
    )
    assert response.status_code == 302
    session.expire_all()
    assert session.scalars(select(Invoice)).one().status == InvoiceStatus.PAID


def test_an_organisation_pays_by_card_and_invites_a_colleague_who_joins(
    client: FlaskClient,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    outbox: Outbox,
) -> None:
    plans_on_sale(session, gateway)
    admin = factories.reader(email="boss@ministry.example")
    colleague = factories.reader(email="ana@ministry.example")
    session.commit()
    _login(client, admin.email)
    token = csrf_token(client, "/groups/new")
    created = client.post(
        "/groups/new", data={**ORDER, "payment": "card", "confirm": "yes", "csrf_token": token}
    )
    assert created.status_code == 302 and "/pay" in created.headers["Location"]
    group = session.scalars(select(Group)).one()
    secret = client.post(
        f"/groups/{group.public_id}/setup-intent",
        headers={"X-CSRFToken": csrf_token(client, created.headers["Location"])},
    ).get_json()["client_secret"]
    setup_intent_id = secret.split("_secret_")[0]
    card = stripe.create_card(VISA)
    stripe.confirm_setup_intent(setup_intent_id, card)
    paid = post_form(client, created.headers["Location"], {"payment_method": card})
    assert paid.status_code == 302, paid.get_data(as_text=True)
    subscription = session.scalars(select(Subscription)).one()
    assert (subscription.status, subscription.quantity) == (SubscriptionStatus.ACTIVE, 3)

    show = f"/groups/{group.public_id}"
    invited = post_form(client, f"{show}/invites", {"emails": "ana@ministry.example, nope"})
    page = invited.get_data(as_text=True)
    assert 'data-refused="nope"' in page and "Invited: ana@ministry.example" in page
    link = outbox.last_link("ana@ministry.example", "/join/")

    client.post("/logout", data={"csrf_token": csrf_token(client, "/account")})
    assert "Create an account with ana@ministry.example" in client.get(link).get_data(as_text=True)
    _login(client, colleague.email)
    joined = post_form(client, link, {})
    assert joined.status_code == 302
    again = client.get(link)
    assert again.status_code == 410 and "already used" in again.get_data(as_text=True)


def _group_by_invoice(client: FlaskClient, session: Session, gateway: StripeGateway) -> Group:
    plans_on_sale(session, gateway)
    admin = factories.reader(email="boss@ministry.example")
    session.commit()
    _login(client, admin.email)
    group, _ = order_group(client, session, payment="invoice", vat_id=ORDER["vat_id"])
    return group


def test_seats_change_on_stripe_after_the_price_difference_is_shown_never_below_the_members(
    client: FlaskClient, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    group = _group_by_invoice(client, session, gateway)
    show = f"/groups/{group.public_id}"
    # Paid first: a subscription enters the ledger with its first payment.
    paid = client.post(f"{show}/dev/bank-transfer", data={"csrf_token": csrf_token(client, show)})
    assert paid.status_code == 302
    preview = post_form(client, f"{show}/seats", {"seats": "5"})
    page = preview.get_data(as_text=True)
    assert "From 3 to 5 seats" in page and "192.00" in page  # 2 seats for the (whole) year
    session.expire_all()
    assert session.scalars(select(Subscription)).one().quantity == 3  # not before confirming
    confirmed = post_form(
        client, f"{show}/seats", {"seats": "5", "confirm": "yes", "quote": _signed_quote(page)}
    )
    assert confirmed.status_code == 302
    session.expire_all()
    subscription = session.scalars(select(Subscription)).one()
    assert subscription.quantity == 5
    assert gateway.retrieve_subscription(subscription.stripe_id).quantity == 5
    kinds = [e.kind for e in session.scalars(select(SubscriptionEvent))]
    assert SubscriptionEventKind.SEATS_CHANGED in kinds
    assert session.scalars(
        select(AuditLog).where(AuditLog.action == "group.seats_changed")
    ).one().details == {"from": 3, "to": 5}

    for _ in range(3):
        groups.claim_seat(session, group, factories.reader(), now=clock.now())
    session.commit()
    refused = post_form(client, f"{show}/seats", {"seats": "3"})
    assert refused.status_code == 400
    assert "4 seats are in use" in refused.get_data(as_text=True)
    assert gateway.retrieve_subscription(subscription.stripe_id).quantity == 5


def _paid_group_halfway_through_its_year(
    client: FlaskClient, session: Session, gateway: StripeGateway, clock: FixedClock
) -> tuple[Group, Subscription]:
    """A group of 3 seats in Germany without a VAT number (7 % on top), paid, with the clock
    half-way through its paid year."""
    plans_on_sale(session, gateway)
    admin = factories.reader(email="boss@ministry.example")
    session.commit()
    _login(client, admin.email)
    group, _ = order_group(client, session, payment="invoice")
    show = f"/groups/{group.public_id}"
    client.post(f"{show}/dev/bank-transfer", data={"csrf_token": csrf_token(client, show)})
    session.expire_all()
    subscription = session.scalars(select(Subscription)).one()
    start, end = subscription.current_period_start, subscription.current_period_end
    clock.set(start + (end - start) / 2)
    return group, subscription


def test_the_seat_change_price_is_stripes_proration_with_vat_and_the_change_costs_exactly_that(
    client: FlaskClient,
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
    stripe: LocalstripeServer,
) -> None:
    group, subscription = _paid_group_halfway_through_its_year(client, session, gateway, clock)
    show = f"/groups/{group.public_id}"

    preview = post_form(client, f"{show}/seats", {"seats": "5"})

    page = preview.get_data(as_text=True)
    # Half a year of 2 more seats at 96.00 a year: 96.00 net, 7 % German VAT on top.
    assert 'data-net="9600" data-tax="672" data-total="10272"' in page
    assert "96.00" in page and "6.72" in page and "102.72" in page
    shown_at = int(clock.now().timestamp())
    clock.advance(timedelta(minutes=20))
    token = csrf_token(client, show)
    confirmed = client.post(
        f"{show}/seats",
        data={
            "seats": "5",
            "confirm": "yes",
            "quote": _signed_quote(page),
            "csrf_token": token,
        },
    )
    assert confirmed.status_code == 302

    customer = gateway.retrieve_subscription(subscription.stripe_id).customer_id
    pending = stripe.request("GET", f"/v1/invoiceitems?customer={customer}")["data"]
    assert sorted(item["amount"] for item in pending if item["proration"]) == [-14400, 24000]
    assert {item["period"]["start"] for item in pending} == {shown_at}
    upcoming = gateway.preview_next_invoice(customer, subscription.stripe_id)
    assert (upcoming.subtotal, upcoming.tax) == (5 * 9600 + 9600, 5 * 672 + 672)


def test_going_down_a_seat_shows_stripes_credit_with_its_vat_for_the_next_invoice(
    client: FlaskClient, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    group, subscription = _paid_group_halfway_through_its_year(client, session, gateway, clock)
    show = f"/groups/{group.public_id}"
    _, confirmed = _confirm_seats(client, show, 5)
    assert confirmed.status_code == 302
    clock.advance(timedelta(minutes=1))  # the preview's proration lines are of its own moment

    preview = post_form(client, f"{show}/seats", {"seats": "4"})

    page = preview.get_data(as_text=True)
    # Half a year of one seat less: 48.00 net and its 3.36 VAT come back.
    assert 'data-net="-4800" data-tax="-336" data-total="-5136"' in page
    assert "a credit of" in page and "51.36" in page
    assert gateway.retrieve_subscription(subscription.stripe_id).quantity == 5


def test_a_seat_change_confirmed_more_than_an_hour_after_its_price_shows_a_fresh_price(
    client: FlaskClient, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    group, subscription = _paid_group_halfway_through_its_year(client, session, gateway, clock)
    show = f"/groups/{group.public_id}"
    preview = post_form(client, f"{show}/seats", {"seats": "5"})
    stale = _signed_quote(preview.get_data(as_text=True))
    clock.advance(groups.PRORATION_DATE_MAX_AGE + timedelta(minutes=1))

    refused = post_form(client, f"{show}/seats", {"seats": "5", "confirm": "yes", "quote": stale})

    assert refused.status_code == 400
    page = refused.get_data(as_text=True)
    assert 'data-field="seats"' in page and "out of date" in page
    assert "From 3 to 5 seats" in page and _signed_quote(page) != stale
    assert gateway.retrieve_subscription(subscription.stripe_id).quantity == 3


def _signed_for(group: Group, seats_to: int, now: datetime, keys: list[str]) -> str:
    """A confirmation value for ``group`` going from 3 to ``seats_to`` seats, signed by ``keys``."""
    quote = groups.SeatQuote(
        seats_from=3,
        seats_to=seats_to,
        net=0,
        tax=0,
        currency="eur",
        proration_date=now.replace(microsecond=0),
        tax_note="",
    )
    return groups.seat_change_token(keys, group, quote, now)


def test_a_seat_change_is_made_only_at_the_price_shown_for_that_group_and_those_seats(
    app: Flask,
    client: FlaskClient,
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
) -> None:
    group, subscription = _paid_group_halfway_through_its_year(client, session, gateway, clock)
    show = f"/groups/{group.public_id}"
    preview = post_form(client, f"{show}/seats", {"seats": "6"})
    shown_for_six = _signed_quote(preview.get_data(as_text=True))
    other_group = factories.group_with_seats(5)
    session.commit()
    keys = app.config["SECRET_KEYS"]
    attempts = {
        "no signed price": "",
        "the price of 6 seats": shown_for_six,
        "another group's price": _signed_for(other_group, 40, clock.now(), keys),
        "a price signed with another key": _signed_for(group, 40, clock.now(), ["forged" * 8]),
        "a tampered price": shown_for_six[:-3] + ("AAA" if shown_for_six[-3:] != "AAA" else "BBB"),
    }
    for attempt, signed in attempts.items():
        refused = post_form(
            client, f"{show}/seats", {"seats": "40", "confirm": "yes", "quote": signed}
        )

        assert refused.status_code == 400, attempt
        page = refused.get_data(as_text=True)
        assert 'id="seats-error" data-field="seats"' in page, attempt
        assert "Confirm the price difference shown" in page, attempt
        assert "From 3 to 40 seats" in page and "Confirm 40 seats" in page, attempt
        assert gateway.retrieve_subscription(subscription.stripe_id).quantity == 3, attempt

    fresh = _signed_quote(page)
    confirmed = post_form(
        client, f"{show}/seats", {"seats": "40", "confirm": "yes", "quote": fresh}
    )
    assert confirmed.status_code == 302
    assert gateway.retrieve_subscription(subscription.stripe_id).quantity == 40


def test_a_seat_change_priced_before_another_change_of_the_seats_is_priced_again(
    client: FlaskClient, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    group, subscription = _paid_group_halfway_through_its_year(client, session, gateway, clock)
    show = f"/groups/{group.public_id}"
    preview = post_form(client, f"{show}/seats", {"seats": "6"})
    shown_from_three = _signed_quote(preview.get_data(as_text=True))
    _, confirmed = _confirm_seats(client, show, 10)
    assert confirmed.status_code == 302

    refused = post_form(
        client, f"{show}/seats", {"seats": "6", "confirm": "yes", "quote": shown_from_three}
    )

    assert refused.status_code == 400
    page = refused.get_data(as_text=True)
    assert "now has 10 seats, not the 3" in page and "From 10 to 6 seats" in page
    assert gateway.retrieve_subscription(subscription.stripe_id).quantity == 10


def test_staff_approve_a_domain_and_readers_of_it_join_from_their_organisations_page(
    client: FlaskClient, session: Session, gateway: StripeGateway
) -> None:
    group = _group_by_invoice(client, session, gateway)
    added = post_form(client, f"/groups/{group.public_id}", {"domain": "ministry.example"})
    assert added.status_code == 405
    added = client.post(
        f"/groups/{group.public_id}/domains",
        data={
            "domain": "gmail.com",
            "csrf_token": csrf_token(client, f"/groups/{group.public_id}"),
        },
    )
    assert added.status_code == 400 and "webmail" in added.get_data(as_text=True)
    client.post(
        f"/groups/{group.public_id}/domains",
        data={
            "domain": "ministry.example",
            "csrf_token": csrf_token(client, f"/groups/{group.public_id}"),
        },
    )
    domain = session.scalars(select(GroupDomain)).one()
    assert domain.approved_at is None
    assert client.get("/staff/groups").status_code == 403  # an admin of a group is not staff

    factories.reader(email="support@example.org", staff_role=StaffRole.SUPPORT)
    factories.reader(email="ana@ministry.example")
    session.commit()
    client.post("/logout", data={"csrf_token": csrf_token(client, "/account")})
    _login(client, "support@example.org")
    listing = client.get("/staff/groups").get_data(as_text=True)
    assert 'data-pending-domain="ministry.example"' in listing
    approved = client.post(
        f"/staff/groups/domains/{domain.id}?approve=1",
        data={"csrf_token": csrf_token(client, "/staff/groups")},
    )
    assert approved.status_code == 302
    client.post("/logout", data={"csrf_token": csrf_token(client, "/account")})

    _login(client, "ana@ministry.example")
    page = client.get("/groups").get_data(as_text=True)
    assert f'data-join="{group.public_id}"' in page
    joined = client.post(
        f"/groups/{group.public_id}/join", data={"csrf_token": csrf_token(client, "/groups")}
    )
    assert joined.status_code == 302
    assert "you have a seat" in client.get("/groups").get_data(as_text=True)


def test_the_api_grants_a_visitor_from_an_approved_range_naming_the_group(
    client: FlaskClient, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    group = _group_by_invoice(client, session, gateway)
    staff = factories.reader(staff_role=StaffRole.SUPPORT)
    groups.staff_add_private_range(
        session,
        staff,
        group,
        "203.0.113.0/24",
        label="Office",
        rules=groups.GroupRules(),
        now=clock.now(),
    )
    _client, key, _token_key = api_clients.create(
        session,
        name="site",
        scopes=[api_clients.SCOPE_ENTITLEMENTS_READ],
        allowed_origins=[],
        created_by=None,
        now=clock.now(),
    )
    session.commit()
    headers = {"Authorization": f"Bearer {key}"}
    inside = client.get("/api/v1/entitlement?ip=203.0.113.10", headers=headers).get_json()
    assert (inside["granted"], inside["reason"], inside["group_id"]) == (
        True,
        "group_ip",
        group.public_id,
    )
    outside = client.get("/api/v1/entitlement?ip=203.0.114.1", headers=headers).get_json()
    assert (outside["granted"], outside["reason"], outside["group_id"]) == (False, "none", None)


def test_an_admin_cancels_at_the_end_of_the_year_members_read_until_then_and_renews_again(
    client: FlaskClient, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    group = _group_by_invoice(client, session, gateway)
    member = factories.reader()
    groups.claim_seat(session, group, member, now=clock.now())
    session.commit()
    show = f"/groups/{group.public_id}"
    cancelled = client.post(
        f"{show}/renewal?renew=0", data={"csrf_token": csrf_token(client, show)}
    )
    assert cancelled.status_code == 302
    session.expire_all()
    subscription = session.scalars(select(Subscription)).one()
    assert subscription.cancel_at_period_end
    assert gateway.retrieve_subscription(subscription.stripe_id).cancel_at_period_end
    decision = decide(session.get_one(Reader, member.id), clock.now())
    assert (decision.reason, decision.until) == (Reason.GROUP_SEAT, subscription.current_period_end)
    assert "Renew again" in client.get(show).get_data(as_text=True)
    client.post(f"{show}/renewal?renew=1", data={"csrf_token": csrf_token(client, show)})
    session.expire_all()
    assert not session.scalars(select(Subscription)).one().cancel_at_period_end


def test_an_overdue_invoice_makes_the_group_past_due_and_mails_billing_and_admins_once(
    client: FlaskClient,
    session: Session,
    gateway: StripeGateway,
    runner: FlaskCliRunner,
    outbox: Outbox,
    clock: FixedClock,
) -> None:
    client.application.config["GROUP_INVOICE_DAYS_UNTIL_DUE"] = 0  # due at once
    group = _group_by_invoice(client, session, gateway)
    member = factories.reader()
    groups.claim_seat(session, group, member, now=clock.now())
    session.commit()
    time.sleep(1.1)  # localstripe's due dates run on the wall clock, in whole seconds
    result = runner.invoke(args=["billing", "tick"])
    assert result.exit_code == 0, result.output
    assert "invoices: 1/1" in result.output  # the tick looked at the open invoice
    session.expire_all()
    subscription = session.scalars(select(Subscription)).one()
    assert subscription.status == SubscriptionStatus.PAST_DUE
    subjects = {(m.to, m.subject) for m in outbox.all() if "overdue" in m.subject}
    assert subjects == {
        ("accounts@ministry.example", "Example Ministry: a payment of €288.00 is overdue"),
        ("boss@ministry.example", "Example Ministry: a payment of €288.00 is overdue"),
    }
    reader = session.get_one(Reader, member.id)
    assert decide(reader, clock.now()).reason == Reason.GROUP_SEAT
    assert decide(reader, clock.now() + timedelta(days=8)).reason == Reason.PAYMENT_FAILED
    runner.invoke(args=["billing", "tick"])
    assert len([m for m in outbox.all() if "overdue" in m.subject]) == 2


def test_an_organisation_without_a_vat_number_pays_its_countrys_vat_on_top_of_the_net_price(
    client: FlaskClient, session: Session, gateway: StripeGateway
) -> None:
    plans_on_sale(session, gateway)
    admin = factories.reader(email="boss@ministry.example")
    session.commit()
    _login(client, admin.email)
    order = {**ORDER, "vat_id": "", "payment": "invoice"}
    review = post_form(client, "/groups/new", order).get_data(as_text=True)
    assert "288.00" in review and "20.16" in review and "308.16" in review  # 7 % DE on top
    token = csrf_token(client, "/groups/new")
    done = client.post("/groups/new", data={**order, "confirm": "yes", "csrf_token": token})
    assert done.status_code == 302
    invoice = session.scalars(select(Invoice)).one()
    assert (invoice.total, invoice.tax, invoice.tax_country) == (30816, 2016, "DE")
    assert not invoice.reverse_charge


def test_an_organisation_with_a_vat_number_of_another_member_state_is_reverse_charged(
    client: FlaskClient, session: Session, gateway: StripeGateway
) -> None:
    plans_on_sale(session, gateway)
    admin = factories.reader(email="boss@ministry.example")
    session.commit()
    _login(client, admin.email)
    order = {**ORDER, "payment": "invoice"}
    review = post_form(client, "/groups/new", order).get_data(as_text=True)
    assert "Reverse charge" in review or "reverse charge" in review
    token = csrf_token(client, "/groups/new")
    done = client.post("/groups/new", data={**order, "confirm": "yes", "csrf_token": token})
    assert done.status_code == 302
    invoice = session.scalars(select(Invoice)).one()
    assert (invoice.total, invoice.tax) == (28800, 0)
    assert invoice.reverse_charge


def test_a_vat_number_with_wrong_check_digits_is_refused_naming_the_field(
    client: FlaskClient, session: Session, gateway: StripeGateway
) -> None:
    plans_on_sale(session, gateway)
    admin = factories.reader(email="boss@ministry.example")
    session.commit()
    _login(client, admin.email)
    review = post_form(
        client, "/groups/new", {**ORDER, "vat_id": "DE123456789", "payment": "invoice"}
    )
    assert review.status_code == 400
    assert session.scalars(select(Group)).first() is None


def test_a_refused_form_far_down_the_group_page_is_named_at_its_top_with_a_link_to_its_field(
    client: FlaskClient, session: Session, gateway: StripeGateway
) -> None:
    group = _group_by_invoice(client, session, gateway)
    show = f"/groups/{group.public_id}"

    refused = post_form(client, f"{show}/domains", {"domain": "gmail.com"})

    html = refused.get_data(as_text=True)
    assert refused.status_code == 400
    start = html.index('class="form-errors error-summary"')
    summary = html[start : html.index("</div>", start)]
    assert start < html.index("<h2"), "above every section of the page"
    assert 'role="alert"' in html[start - 40 : start + 80]
    assert 'href="#domain"' in summary and "Domain: " in summary and "webmail" in summary
    assert "error-summary" not in client.get(show).get_data(as_text=True)
