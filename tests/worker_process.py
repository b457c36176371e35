"""A worker in a process of its own, for the tests that kill one or race two.

    python -m tests.worker_process --database-url URL --now ISO --name NAME [--ready F] [--go F]
        [--hang-marker F]

It builds the app on the test database with a clock standing still at ``--now`` and the test
handlers of :mod:`tests.test_worker` (``tollgate.test.counted`` writes one audit entry per call;
``tollgate.test.hang`` writes one, sends it to the database, creates ``--hang-marker`` and then
hangs, to be killed). It touches ``--ready`` once the app is built, waits for ``--go`` to exist,
runs one worker pass (``flask billing worker --once``) and prints its tally as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

from billing import create_app
from billing.clock import FixedClock
from billing.services import audit
from billing.worker import Worker
from webhooks.registry import HANDLERS, EventContext, Registration

COUNTED = "tollgate.test.counted"
HANG = "tollgate.test.hang"


def count_effect(context: EventContext) -> None:
    """One audit entry per call, naming the event."""
    audit.record(
        context.session,
        now=context.now,
        actor="stripe",
        action="test.counted",
        details={"event": context.event_id},
    )


def main() -> None:
    """Run one worker pass as the arguments say."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--now", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--go", type=Path)
    parser.add_argument("--hang-marker", type=Path)
    args = parser.parse_args()

    def hang(context: EventContext) -> None:
        count_effect(context)
        context.session.flush()
        assert args.hang_marker is not None
        args.hang_marker.touch()
        time.sleep(3600)

    import webhooks.handlers  # noqa: F401 - the real table first, as in the app

    HANDLERS[COUNTED] = Registration(count_effect, why="counts deliveries")
    HANDLERS[HANG] = Registration(hang, why="hangs until killed")
    app = create_app(
        {
            "DATABASE_URL": args.database_url,
            "CLOCK": FixedClock(datetime.fromisoformat(args.now)),
            "SECRET_KEYS": ["test-secret-key-that-is-long-enough-0123456789"],
        }
    )
    if args.ready is not None:
        args.ready.touch()
    while args.go is not None and not args.go.exists():
        time.sleep(0.01)
    tally = Worker(app, name=args.name, batch=10).run_once()
    print(json.dumps({"events": dict(tally.events), "mails": dict(tally.mails)}), flush=True)


if __name__ == "__main__":
    main()
