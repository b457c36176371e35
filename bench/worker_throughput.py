"""Worker throughput on PostgreSQL against localstripe: events handled per second, one and two
workers, against the rate at which the same number of clients can fetch from localstripe.

Every event is a ``customer.updated`` about one of 200 customers of ours on localstripe, so each
is real work: claim, re-fetch the customer from Stripe, upsert the mirror under a row lock,
commit. The workers are ``flask billing worker --once`` processes; the rate is events over the
time between the first and the last event handled (process start-up excluded). The baseline is
``GET /v1/customers/<id>`` through the gateway from as many threads as there are workers: the
one call each event needs, with nothing of ours around it. Goal: two workers keep up with 300
events a second.

    .venv/bin/python bench/worker_throughput.py [--events 3000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, insert, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from entitlement_api import ADMIN_URL, SECRET  # noqa: E402

from billing import db  # noqa: E402
from billing.gateway import StripeGateway  # noqa: E402
from billing.models import Reader, WebhookEvent, WebhookEventStatus  # noqa: E402
from tests.stripe_server import LocalstripeServer  # noqa: E402

CUSTOMERS = 200


def seed_customers(url: str, gateway: StripeGateway) -> list[str]:
    """Readers in the database and their customers on localstripe (tagged as ours); their ids."""
    now = datetime.now(UTC)
    public_ids = [f"rdr_w{n:05d}{secrets.token_hex(3)}" for n in range(CUSTOMERS)]
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            insert(Reader),
            [
                {
                    "public_id": pid,
                    "email": f"w{n}@example.org",
                    "email_canonical": f"w{n}@example.org",
                    "name": f"W {n}",
                    "country": "BE",
                    "password_hash": "x",
                    "session_token": pid,
                    "staff_role": "none",
                    "created_at": now,
                }
                for n, pid in enumerate(public_ids)
            ],
        )
    engine.dispose()
    return [
        gateway.create_customer(f"w{n}@example.org", metadata={"tollgate_reader_id": pid}).id
        for n, pid in enumerate(public_ids)
    ]


def store_events(url: str, customers: list[str], count: int) -> None:
    """``count`` stored ``customer.updated`` events, round-robin over ``customers``."""
    now = datetime.now(UTC)
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE webhook_events"))
        conn.execute(
            insert(WebhookEvent),
            [
                {
                    "stripe_event_id": f"evt_{uuid.uuid4().hex}",
                    "type": "customer.updated",
                    "livemode": False,
                    "stripe_created_at": now,
                    "received_at": now,
                    "payload": {"data": {"object": {"id": customers[n % len(customers)]}}},
                    "status": WebhookEventStatus.RECEIVED,
                    "attempts": 0,
                }
                for n in range(count)
            ],
        )
    engine.dispose()


def run_workers(url: str, env: dict[str, str], workers: int, count: int) -> float:
    """Run ``workers`` worker processes over the stored events; events handled per second."""
    argv = [sys.executable, "-m", "flask", "--app", "app", "billing", "worker", "--once"]
    processes = [
        subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
        for _ in range(workers)
    ]
    for process in processes:
        if process.wait(timeout=600) != 0:
            raise RuntimeError(f"a worker exited with status {process.returncode}")
    engine = db.make_engine(url)
    with engine.connect() as conn:
        done, first, last = conn.execute(
            select(
                func.count(),
                func.min(WebhookEvent.processed_at),
                func.max(WebhookEvent.processed_at),
            ).where(WebhookEvent.status == WebhookEventStatus.PROCESSED)
        ).one()
    engine.dispose()
    if done != count:
        raise RuntimeError(f"{done} of {count} events processed")
    return float(done / max((last - first).total_seconds(), 1e-6))


def fetch_rate(gateway: StripeGateway, customers: list[str], clients: int, count: int) -> float:
    """Customers fetched per second from localstripe by ``clients`` threads."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(
            pool.map(
                lambda n: gateway.retrieve_customer(customers[n % len(customers)]), range(count)
            )
        )
    return count / (time.monotonic() - started)


def main() -> None:
    """Set up, measure one and two workers and the baseline, print markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    args = parser.parse_args()
    name = f"tollgate_bench_{secrets.token_hex(4)}"
    admin = db.make_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    server = LocalstripeServer(Path(tempfile.mkdtemp()))
    server.start()
    try:
        db.upgrade(url)
        config = {
            "STRIPE_SECRET_KEY": "sk_test_localstripe",
            "STRIPE_API_BASE": server.url,
            "STRIPE_MAX_NETWORK_RETRIES": 0,
        }
        gateway = StripeGateway.from_config(config)
        customers = seed_customers(url, gateway)
        env = {
            "DATABASE_URL": url,
            "SECRET_KEYS": SECRET,
            "TOLLGATE_ENV": "development",
            "STRIPE_API_BASE": server.url,
        }
        rates: dict[int, float] = {}
        baselines: dict[int, float] = {}
        for workers in (1, 2):
            store_events(url, customers, args.events)
            rates[workers] = run_workers(url, env, workers, args.events)
            baselines[workers] = fetch_rate(gateway, customers, workers, args.events)
    finally:
        server.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    print()
    print("| workers | events/s | localstripe fetches/s, same clients (baseline) | ratio | goal |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for workers in (1, 2):
        goal = "300" if workers == 2 else ""
        print(
            f"| {workers} | {rates[workers]:,.0f} | {baselines[workers]:,.0f} | "
            f"{rates[workers] / baselines[workers]:.2f} | {goal} |"
        )
    print()
    print(
        f"{args.events:,} `customer.updated` events over {CUSTOMERS} customers per run; "
        "`flask billing worker --once` processes; localstripe single process; "
        "`.venv/bin/python bench/worker_throughput.py`"
    )


if __name__ == "__main__":
    main()
