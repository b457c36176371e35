"""The entitlement endpoint on PostgreSQL with 100,000 readers, against a bare Flask endpoint.

Both apps are served the same way (gunicorn, 2 sync workers, loopback) and loaded the same way
(``wrk -t2 -c32 -d10s --latency``, bounded in time, loopback only), with the same request paths
and the same ``Authorization`` header. Two access patterns are measured:

- **warm**: 2,000 distinct readers (the readers active in the last few minutes), after a warm-up
  run has walked through them repeatedly so both workers hold their decisions; steady article
  traffic, where a reader reads several articles.
- **cold**: uniform over all 100,000 readers, right after a restart, so most checks miss the cache
  and go to the database.

    .venv/bin/python bench/entitlement_api.py [--duration 10] [--readers 100000]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from billing import db  # noqa: E402
from billing.models import (  # noqa: E402
    BillingInterval,
    Customer,
    Plan,
    PlanKind,
    Reader,
    Subscription,
    SubscriptionStatus,
    Trial,
    TrialStatus,
)

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
SECRET = "bench-secret-" + "x" * 40
WARM_READERS = 2_000
LUA_SEQUENTIAL = """
local ids = {}
local position = 0
local key = os.getenv("BENCH_KEY")
function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
end
function request()
  position = position % #ids + 1
  return wrk.format("GET", "/api/v1/readers/" .. ids[position] .. "/entitlement", {["Authorization"] = "Bearer " .. key})
end
"""
LUA = """
local ids = {}
local key = os.getenv("BENCH_KEY")
function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end
function request()
  local id = ids[math.random(#ids)]
  return wrk.format("GET", "/api/v1/readers/" .. id .. "/entitlement", {["Authorization"] = "Bearer " .. key})
end
"""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed(url: str, readers: int) -> list[str]:
    """Fill a fresh database with ``readers`` readers: a third subscribed, a third on trial."""
    now = datetime.now(UTC)
    engine = db.make_engine(url)
    public_ids = [f"rdr_b{i:07d}{secrets.token_hex(3)}" for i in range(readers)]
    with engine.begin() as conn:
        plan_id = conn.execute(
            insert(Plan).returning(Plan.id),
            [
                {
                    "code": "individual-monthly",
                    "name": "Monthly",
                    "kind": PlanKind.INDIVIDUAL,
                    "interval": BillingInterval.MONTH,
                    "amount": 1200,
                    "currency": "eur",
                    "active": True,
                }
            ],
        ).scalar_one()
        rows = [
            {
                "public_id": pid,
                "email": f"bench{i}@example.org",
                "email_canonical": f"bench{i}@example.org",
                "name": f"Bench {i}",
                "country": "BE",
                "password_hash": "x",
                "session_token": pid,
                "email_verified_at": now,
                "staff_role": "none",
                "created_at": now,
            }
            for i, pid in enumerate(public_ids)
        ]
        for start in range(0, readers, 10_000):
            conn.execute(insert(Reader), rows[start : start + 10_000])
        ids = dict(conn.execute(text("SELECT public_id, id FROM readers")).all())
        subscribed = public_ids[0::3]
        conn.execute(
            insert(Customer),
            [
                {
                    "stripe_id": f"cus_{pid}",
                    "reader_id": ids[pid],
                    "email": "x@example.org",
                    "email_canonical": "x@example.org",
                    "created_at": now,
                }
                for pid in subscribed
            ],
        )
        customers = dict(conn.execute(text("SELECT reader_id, id FROM customers")).all())
        conn.execute(
            insert(Subscription),
            [
                {
                    "public_id": "sub_" + pid[4:],
                    "stripe_id": f"sub_{pid}",
                    "customer_id": customers[ids[pid]],
                    "reader_id": ids[pid],
                    "plan_id": plan_id,
                    "status": SubscriptionStatus.ACTIVE,
                    "quantity": 1,
                    "current_period_start": now,
                    "current_period_end": now + timedelta(days=30),
                    "cancel_at_period_end": False,
                    "collection_method": "charge_automatically",
                    "created_at": now,
                    "updated_at": now,
                }
                for pid in subscribed
            ],
        )
        conn.execute(
            insert(Trial),
            [
                {
                    "reader_id": ids[pid],
                    "email_canonical": f"trial-{pid}@example.org",
                    "status": TrialStatus.ACTIVE,
                    "started_at": now,
                    "ends_at": now + timedelta(days=14),
                }
                for pid in public_ids[1::3]
            ],
        )
    engine.dispose()
    return public_ids


def api_key(url: str) -> str:
    """Create an API client with the entitlements scope and return its key."""
    from billing import create_app
    from billing.services import api_clients

    app = create_app({"DATABASE_URL": url, "SECRET_KEYS": [SECRET]})
    with app.app_context():
        session = db.session()
        _client, key, _token_key = api_clients.create(
            session,
            name="bench",
            scopes=["entitlements:read"],
            allowed_origins=[],
            created_by=None,
            now=datetime.now(UTC),
        )
        session.commit()
    app.extensions["db_engine"].dispose()
    return key


@contextmanager
def served(target: str, env: dict[str, str], threads: int = 1) -> Iterator[str]:
    """Serve ``target`` with gunicorn (2 workers: sync, or gthread with ``threads`` each) on a
    free port; yield its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            GUNICORN,
            "--workers",
            "2",
            "--worker-class",
            "sync" if threads == 1 else "gthread",
            "--threads",
            str(threads),
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            target,
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            break
        except OSError as exc:
            if getattr(exc, "code", None) == 404:
                break
            time.sleep(0.2)
    try:
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def wrk(base: str, ids_file: Path, key: str, duration: int, lua: str = LUA) -> dict[str, float]:
    """Load ``base`` with wrk and return req/s, p50 and p99 latency in ms."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            "-c32",
            f"-d{duration}s",
            "--latency",
            "-s",
            script.name,
            base,
            "--",
            str(ids_file),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "BENCH_KEY": key},
        timeout=duration + 60,
    ).stdout
    os.unlink(script.name)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} failed responses from {base}:\n{out}")

    def latency(pct: str) -> float:
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", out, re.M)
        assert match, out
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    return {"rps": float(rps.group(1)), "p50": latency("50"), "p99": latency("99")}


def main() -> None:
    """Seed, serve, load, and print the figures as markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--readers", type=int, default=100_000)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")

    name = f"tollgate_bench_{secrets.token_hex(4)}"
    admin = db.make_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        db.upgrade(url)
        print(f"seeding {args.readers:,} readers ...", flush=True)
        ids = seed(url, args.readers)
        key = api_key(url)
        work = Path(tempfile.mkdtemp())
        warm_ids, all_ids = work / "warm.txt", work / "all.txt"
        warm_ids.write_text("\n".join(random.sample(ids, min(WARM_READERS, len(ids)))) + "\n")
        all_ids.write_text("\n".join(ids) + "\n")
        env = {"DATABASE_URL": url, "SECRET_KEYS": SECRET, "TOLLGATE_ENV": "development"}
        results: dict[str, dict[str, float]] = {}
        with served("bench.bare_app:app", {}) as bare:
            results["bare"] = wrk(bare, all_ids, key, args.duration)
        with served("app:app", env) as tollgate:
            results["cold"] = wrk(tollgate, all_ids, key, args.duration)
        with served("app:app", env) as tollgate:
            # Warm-up: walk the warm set over and over, so each worker has seen every reader.
            wrk(tollgate, warm_ids, key, 2 * args.duration, lua=LUA_SEQUENTIAL)
            results["warm"] = wrk(tollgate, warm_ids, key, args.duration)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    bare_rps = results["bare"]["rps"]
    print()
    print(
        f"| endpoint ({args.readers:,} readers, PostgreSQL) | req/s | p50 ms | p99 ms | ratio to bare |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, key_ in (
        ("bare Flask JSON (baseline)", "bare"),
        (f"entitlement, warm cache ({WARM_READERS:,} active readers)", "warm"),
        ("entitlement, cold (uniform over all readers)", "cold"),
    ):
        r = results[key_]
        print(
            f"| {label} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps'] / bare_rps:.2f} |"
        )
    print()
    print(
        f"gunicorn 2 sync workers; `wrk -t2 -c32 -d{args.duration}s --latency`; "
        f"{os.cpu_count()} cores; `.venv/bin/python bench/entitlement_api.py`"
    )


if __name__ == "__main__":
    main()
