"""Webhook intake (verify + store + commit) on PostgreSQL, against a bare Flask endpoint.

Both apps are served the same way (gunicorn, 2 sync workers, loopback) and loaded the same way
(``wrk -t2 -c32 -d10s --latency``) with the same bodies: events signed beforehand as Stripe signs
them, each with its own id, so every Tollgate delivery verifies the signature, parses and checks
the envelope, inserts a row and commits (a run that outlasts the bodies would start sending
duplicates: the script makes enough for the fastest run seen, with room to spare, and says so if
not). The bare endpoint reads the body and answers the same JSON. Goal: >= 0.5 of the bare one.

    .venv/bin/python bench/webhook_intake.py [--duration 10] [--bodies 60000]
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from entitlement_api import ADMIN_URL, SECRET, served, wrk  # noqa: E402

from billing import db  # noqa: E402
from billing.models import WebhookEvent  # noqa: E402
from webhooks.verify import sign  # noqa: E402

WEBHOOK_SECRET = "whsec_bench_" + "y" * 24
LUA = """
local requests = {}
local position = 0
local threads = 0
function setup(thread)
  thread:set("part", threads)
  threads = threads + 1
end
function init(args)
  local n = 0
  for line in io.lines(args[1]) do
    if n % 2 == part then
      local header, body = line:match("^([^\\t]*)\\t(.*)$")
      requests[#requests + 1] = wrk.format("POST", "/webhooks/stripe",
        {["Stripe-Signature"] = header, ["Content-Type"] = "application/json"}, body)
    end
    n = n + 1
  end
end
function request()
  position = position % #requests + 1
  return requests[position]
end
"""


def signed_bodies(path: Path, count: int) -> None:
    """Write ``count`` lines of ``<Stripe-Signature>\\t<body>``, events of distinct ids."""
    now = int(time.time())
    with path.open("w") as out:
        for n in range(count):
            body = json.dumps(
                {
                    "id": f"evt_bench{n:07d}{secrets.token_hex(6)}",
                    "object": "event",
                    "type": "customer.subscription.updated",
                    "created": now,
                    "livemode": False,
                    "data": {"object": {"id": f"sub_bench{n % 500}", "object": "subscription"}},
                },
                separators=(",", ":"),
            ).encode()
            out.write(f"{sign(body, WEBHOOK_SECRET, now)}\t{body.decode()}\n")


def load(base: str, bodies: Path, duration: int) -> dict[str, float]:
    """Load ``base`` with wrk posting the signed bodies; req/s, p50 and p99 in ms."""
    return wrk(base, bodies, "", duration, lua=LUA)


def main() -> None:
    """Create a database, serve both apps, load them, and print the figures as markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--bodies", type=int, default=60_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    name = f"tollgate_bench_{secrets.token_hex(4)}"
    admin = db.make_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    work = Path(tempfile.mkdtemp())
    bodies = work / "bodies.tsv"
    try:
        db.upgrade(url)
        env = {
            "DATABASE_URL": url,
            "SECRET_KEYS": SECRET,
            "TOLLGATE_ENV": "development",
            "STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        }
        signed_bodies(bodies, args.bodies)
        with served("bench.bare_app:app", {}, args.threads) as bare:
            results = {"bare": load(bare, bodies, args.duration)}
        with served("app:app", env, args.threads) as tollgate:
            results["intake"] = load(tollgate, bodies, args.duration)
        engine = db.make_engine(url)
        with engine.connect() as conn:
            stored = conn.scalar(select(func.count()).select_from(WebhookEvent)) or 0
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)

    intake, bare = results["intake"], results["bare"]
    print()
    print("| endpoint (PostgreSQL) | deliveries/s | p50 ms | p99 ms | ratio to bare |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, r in (
        ("bare Flask POST, body read, JSON answer (baseline)", bare),
        ("`POST /webhooks/stripe`: verify + store + commit", intake),
    ):
        print(
            f"| {label} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
            f"{r['rps'] / bare['rps']:.2f} |"
        )
    print()
    delivered = int(intake["rps"] * args.duration)
    fresh = "every delivery a new event" if delivered <= args.bodies else "some repeats"
    print(
        f"gunicorn 2 sync workers; `wrk -t2 -c32 -d{args.duration}s --latency`; "
        f"about {delivered:,} deliveries, {stored:,} events stored ({fresh}); "
        "`.venv/bin/python bench/webhook_intake.py`"
    )


if __name__ == "__main__":
    main()
