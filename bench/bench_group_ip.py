"""Anonymous visitors by office network: the IP check with 10,000 ranges against the warm reader
check, both answered by the same :class:`DecisionCache` in the same run.

    .venv/bin/python bench/bench_group_ip.py [--iterations N] [--ranges N]

Both through the API (the Flask test client, WSGI without a network: what the content site's
call costs the app) and in process (the cache alone: the reader check there is one dict look-up,
the IP check a parse and a binary search). Prints a markdown table; the goal is an API IP check
at >= 0.9 of the API's warm reader check.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from werkzeug.test import EnvironBuilder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from billing import create_app, db
from billing.clock import FixedClock
from billing.models import (
    BillingInterval,
    Customer,
    Group,
    GroupIPRange,
    Plan,
    PlanKind,
    Reader,
    Subscription,
    SubscriptionStatus,
    Trial,
)
from billing.services import api_clients, decision_cache
from billing.services.group_networks import bounds

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def rate(check: object, iterations: int) -> float:
    """Checks per second of ``check()``."""
    started = time.perf_counter()
    for _ in range(iterations):
        check()  # type: ignore[operator]
    return iterations / (time.perf_counter() - started)


def serve(app: Any, environ: dict[str, Any]) -> bytes:
    """One request through the WSGI app; the body it answered."""
    body = b"".join(app(environ, lambda status, headers, exc_info=None: None))
    assert b'"granted":true' in body, body
    return body


def main() -> None:
    """Seed, warm both paths, measure them alternately, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--ranges", type=int, default=10_000)
    args = parser.parse_args()
    url = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"
    db.upgrade(url)
    app = create_app({"DATABASE_URL": url, "CLOCK": FixedClock(NOW), "TESTING": True})
    app.config["DECISION_CACHE_POLL_INTERVAL"] = 1.0
    with app.app_context():
        session = db.session()
        plan = Plan(
            code="group-seat-yearly",
            name="Seat",
            kind=PlanKind.GROUP,
            interval=BillingInterval.YEAR,
            amount=9600,
            currency="eur",
        )
        reader = Reader(
            email="r@example.org",
            email_canonical="r@example.org",
            name="R",
            country="BE",
            password_hash="!",  # noqa: S106 - no one logs in
            email_verified_at=NOW,
            created_at=NOW,
        )
        session.add_all([plan, reader])
        session.flush()
        session.add(
            Trial(
                reader_id=reader.id,
                email_canonical=reader.email,
                started_at=NOW,
                ends_at=NOW + timedelta(days=14),
            )
        )
        randomiser = random.Random(7)  # noqa: S311 - spread of addresses, not secrets
        starts = randomiser.sample(range(1 << 24), args.ranges)  # distinct /24s: no overlaps
        groups = []
        for n in range(len(starts)):
            group = Group(
                name=f"G{n}", billing_email=f"g{n}@example.org", country="BE", created_at=NOW
            )
            groups.append(group)
        session.add_all(groups)
        session.flush()
        for n, (group, start) in enumerate(zip(groups, starts, strict=True)):
            customer = Customer(
                stripe_id=f"cus_{n}",
                group_id=group.id,
                email=group.billing_email,
                email_canonical=group.billing_email,
                created_at=NOW,
            )
            session.add(customer)
            session.flush()
            session.add(
                Subscription(
                    stripe_id=f"sub_{n}",
                    customer_id=customer.id,
                    group_id=group.id,
                    plan_id=plan.id,
                    status=SubscriptionStatus.ACTIVE,
                    quantity=3,
                    current_period_start=NOW,
                    current_period_end=NOW + timedelta(days=365),
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
            network = ipaddress.IPv4Network((start << 8, 24))
            first, last = bounds(network)
            session.add(
                GroupIPRange(
                    group_id=group.id,
                    cidr=network.compressed,
                    created_at=NOW,
                    version=4,
                    first_address=first,
                    last_address=last,
                    approved_at=NOW,
                )
            )
        session.commit()
        cache = decision_cache.current()
        visitors = [str(ipaddress.IPv4Address((s << 8) + 9)) for s in starts[:1000]]
        for address in visitors:
            cache.lookup_ip(session, address, NOW)
        cache.lookup(session, reader.public_id, NOW)
        assert cache.lookup_ip(session, visitors[0], NOW).reason == "group_ip"
        public_id = reader.public_id
        cycle = itertools.cycle(visitors)
        reader_rates, ip_rates = [], []
        for _ in range(3):
            reader_rates.append(
                rate(lambda: cache.lookup(session, public_id, NOW), args.iterations)
            )
            ip_rates.append(
                rate(lambda: cache.lookup_ip(session, next(cycle), NOW), args.iterations)
            )
        best_reader, best_ip = max(reader_rates), max(ip_rates)
        best_reader, best_ip = max(reader_rates), max(ip_rates)

        _client, key, _token_key = api_clients.create(
            session,
            name="bench",
            scopes=[api_clients.SCOPE_ENTITLEMENTS_READ],
            allowed_origins=[],
            created_by=None,
            now=NOW,
        )
        session.commit()
        http = app.test_client()
        headers = {"Authorization": f"Bearer {key}"}
        reader_path = f"/api/v1/readers/{public_id}/entitlement"
        assert http.get(reader_path, headers=headers).get_json()["reason"] == "trial"
        first = http.get(f"/api/v1/entitlement?ip={visitors[0]}", headers=headers)
        assert first.get_json()["reason"] == "group_ip"
        calls = max(1000, args.iterations // 50)
        # Call the WSGI app with environs built beforehand, as a server would: the figures are
        # the app's, not the test client's URL handling.
        reader_environ = EnvironBuilder(path=reader_path, headers=headers).get_environ()
        ip_environs = [
            EnvironBuilder(
                path="/api/v1/entitlement", query_string={"ip": ip}, headers=headers
            ).get_environ()
            for ip in visitors
        ]
        ip_cycle = itertools.cycle(ip_environs)
        api_reader, api_ip = [], []
        for _ in range(3):
            api_reader.append(rate(lambda: serve(app, dict(reader_environ)), calls))
            api_ip.append(rate(lambda: serve(app, dict(next(ip_cycle))), calls))
        best_api_reader, best_api_ip = max(api_reader), max(api_ip)
    print("| check | per second | ratio |")
    print("| --- | ---: | ---: |")
    print(
        "| API, warm reader check (`GET /api/v1/readers/<id>/entitlement`) | "
        f"{best_api_reader:,.0f} | 1.00 |"
    )
    print(
        f"| API, IP check with {args.ranges:,} ranges (`GET /api/v1/entitlement?ip=`) | "
        f"{best_api_ip:,.0f} | {best_api_ip / best_api_reader:.2f} |"
    )
    print(f"| in process, warm reader check (`DecisionCache.lookup`) | {best_reader:,.0f} | 1.00 |")
    print(
        f"| in process, IP check, {args.ranges:,} ranges (`DecisionCache.lookup_ip`) | "
        f"{best_ip:,.0f} | {best_ip / best_reader:.2f} |"
    )
    print(
        f"\nRun: `.venv/bin/python bench/bench_group_ip.py --iterations {args.iterations}"
        f" --ranges {args.ranges}` (best of 3, in one process; goal: API ratio >= 0.9)."
    )


if __name__ == "__main__":
    main()
