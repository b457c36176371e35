"""Stripe stalls: localstripe frozen with SIGSTOP accepts connections and never answers.

Nothing that the reader or Stripe waits on may wait with it: webhook deliveries are stored and
answered at once, `/healthz` and the content site's API keep answering, and a page that must call
Stripe says within its timeouts that the payment provider is not answering. Once Stripe is back,
the worker handles every stored event once.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import Customer, Plan, Reader, Subscription, SubscriptionEvent, WebhookEvent
from billing.services import api_clients
from billing.worker import Worker
from tests import factories
from tests.browser import LiveServer
from tests.conftest import post_form
from tests.helpers import login
from tests.payments_support import (
    WEBHOOK_SECRET,
    event,
    ledger,
    post_event,
    reader_with_card,
)
from tests.stripe_server import LocalstripeServer
from webhooks.process import Outcome
from webhooks.verify import sign

pytestmark = [pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]

MONTHLY = "individual-monthly"
SUBSCRIPTIONS = 5
EVENTS_EACH = 10
THREADS = 8
STALL_DETECTOR = 30
"""The app's Stripe read timeout in the deliveries test: a call to the stalled Stripe takes this."""
BOUND = 1.0
"""The issue's bound: every delivery answered within a second. They take milliseconds on a quiet
machine (0.22 s at most on SQLite, 0.07 s on PostgreSQL, measured with four other suites running),
and a single call to the stalled Stripe would take ``STALL_DETECTOR`` seconds."""


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Webhooks signed with the tests' secret; Stripe calls give up after a second."""
    app_config["STRIPE_WEBHOOK_SECRETS"] = [WEBHOOK_SECRET]
    app_config["STRIPE_CONNECT_TIMEOUT"] = 1
    app_config["STRIPE_READ_TIMEOUT"] = 1
    return app_config


def timed(call: Callable[[], int]) -> tuple[int, float]:
    """The status ``call`` returns and the seconds it took."""
    started = time.monotonic()
    status = call()
    return status, time.monotonic() - started


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> int:
    """One real HTTP request; its status (errors included)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def test_while_stripe_stalls_fifty_deliveries_from_eight_threads_are_answered_at_once_and_handled_once_it_returns(
    app: Flask,
    live_server: LiveServer,
    stripe: LocalstripeServer,
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
) -> None:
    now = clock.now()
    # Anything that called the stalled Stripe during the deliveries would wait this long.
    app.extensions["stripe_gateway"] = StripeGateway.from_config(
        {**app.config, "STRIPE_READ_TIMEOUT": STALL_DETECTOR}
    )
    price = plans[MONTHLY].stripe_price_id
    assert price is not None
    readers: list[Reader] = []
    subscription_ids: list[str] = []
    for n in range(SUBSCRIPTIONS):
        reader = reader_with_card(session, gateway, stripe, now, email=f"r{n}@example.org")
        assert reader.customer is not None
        created = gateway.create_subscription(
            reader.customer.stripe_id,
            price,
            metadata={"tollgate_reader_id": reader.public_id, "tollgate_plan": MONTHLY},
        )
        readers.append(reader)
        subscription_ids.append(created.id)
    _client, api_key, _token_key = api_clients.create(
        session,
        name="newspaper",
        scopes=[api_clients.SCOPE_ENTITLEMENTS_READ],
        allowed_origins=[],
        created_by=None,
        now=now,
    )
    session.commit()
    kinds = ["customer.subscription.created"] + ["customer.subscription.updated"] * (
        EVENTS_EACH - 1
    )
    deliveries = [
        json.dumps(event(kind, {"id": sid, "object": "subscription"}, created=now)).encode()
        for sid in subscription_ids
        for kind in kinds
    ]
    assert len(deliveries) == 50

    def deliver(body: bytes) -> tuple[int, float]:
        header = sign(body, WEBHOOK_SECRET, int(clock.now().timestamp()))
        return timed(
            lambda: http(
                "POST",
                live_server.at("/webhooks/stripe"),
                body,
                {"Stripe-Signature": header, "Content-Type": "application/json"},
            )
        )

    entitlement = live_server.at(f"/api/v1/readers/{readers[0].public_id}/entitlement")
    probes: list[tuple[str, int, float]] = []
    delivering = threading.Event()

    def probe() -> None:
        while not delivering.is_set():
            for name, url, headers in (
                ("healthz", live_server.at("/healthz"), {}),
                ("entitlement", entitlement, {"Authorization": f"Bearer {api_key}"}),
            ):
                status, seconds = timed(lambda u=url, h=headers: http("GET", u, None, h))
                probes.append((name, status, seconds))

    with stripe.stalled():
        prober = threading.Thread(target=probe)
        prober.start()
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            answers = list(pool.map(deliver, deliveries))
        delivering.set()
        prober.join(timeout=30)
        stored = session.scalar(select(func.count()).select_from(WebhookEvent))

    assert [status for status, _ in answers] == [200] * 50
    slowest = max(seconds for _, seconds in answers)
    assert slowest < BOUND, f"a delivery waited {slowest:.2f} s on a stalled Stripe"
    assert stored == 50
    assert {name for name, _, _ in probes} == {"healthz", "entitlement"}
    assert all(status == 200 for _, status, _ in probes), probes
    assert max(seconds for _, _, seconds in probes) < BOUND

    tally = Worker(app).run_once()
    assert tally.events == {Outcome.PROCESSED: 50}
    session.expire_all()
    mirrored = {s.stripe_id: s for s in session.scalars(select(Subscription))}
    assert set(mirrored) == set(subscription_ids)
    for stripe_id in subscription_ids:
        truth = gateway.retrieve_subscription(stripe_id)
        mine = mirrored[stripe_id]
        assert (mine.status.value, mine.current_period_end, mine.plan.stripe_price_id) == (
            truth.status,
            truth.current_period_end,
            price,
        )
    assert ledger(session) == [("created", 0, 1200)] * SUBSCRIPTIONS, "nothing twice"
    assert session.scalar(select(func.count()).select_from(Customer)) == SUBSCRIPTIONS


def test_subscribing_while_stripe_stalls_says_the_provider_is_not_answering_and_changes_nothing(
    app: Flask,
    stripe: LocalstripeServer,
    plans: dict[str, Plan],
    session: Session,
    clock: FixedClock,
) -> None:
    reader = factories.reader(email="wait@example.org")
    session.commit()
    browser = app.test_client()
    login(browser, reader)
    card = stripe.create_card()

    with stripe.stalled():
        response = post_form(browser, "/subscribe", {"plan": MONTHLY, "payment_method": card})

    assert response.status_code == 503
    text = response.get_data(as_text=True)
    assert "Our payment provider is not answering. Nothing was charged" in text
    assert "try again in a minute" in text
    session.expire_all()
    assert session.scalars(select(Subscription)).all() == []
    assert session.scalars(select(SubscriptionEvent)).all() == []

    again = post_form(browser, "/subscribe", {"plan": MONTHLY, "payment_method": card})
    assert again.status_code == 302, "once Stripe is back, the same form goes through"
    session.expire_all()
    assert len(session.scalars(select(Subscription)).all()) == 1


def test_cancelling_while_stripe_stalls_shows_the_try_again_page_and_keeps_the_subscription(
    app: Flask,
    stripe: LocalstripeServer,
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
) -> None:
    from billing.services import payments

    reader = reader_with_card(session, gateway, stripe, clock.now(), email="stay@example.org")
    payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()
    browser = app.test_client()
    login(browser, reader)

    with stripe.stalled():
        response = post_form(browser, "/account/subscription/cancel", {})

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "60"
    text = response.get_data(as_text=True)
    assert "<h1>Our payment provider is not answering</h1>" in text
    assert 'href="/account/subscription/cancel"' in text, "a way to try again"
    session.expire_all()
    subscription = session.scalars(select(Subscription)).one()
    assert subscription.cancel_at_period_end is False, "nothing was written on our side"

    # Stripe may still carry out a call it had received before stalling (a moment after it is
    # back, which is why this may take a second event); its webhooks then bring the mirror to
    # Stripe's truth, whichever way it went.
    for _ in range(3):
        updated = event(
            "customer.subscription.updated", {"id": subscription.stripe_id}, created=clock.now()
        )
        assert post_event(app.test_client(), updated, now=clock.now()).status_code == 200
        assert Worker(app).run_once().events == {Outcome.PROCESSED: 1}
        session.expire_all()
        mirrored = session.get_one(Subscription, subscription.id).cancel_at_period_end
        truth = gateway.retrieve_subscription(subscription.stripe_id).cancel_at_period_end
        if mirrored is truth:
            break
    assert mirrored is truth
