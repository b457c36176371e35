"""Workers as real processes: one killed with SIGKILL in the middle of a handler, two racing
over a thousand events. The events are handled by test handlers (see :mod:`tests.worker_process`)
that write one audit entry per call, so every effect can be counted per event."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import db
from billing.clock import FixedClock
from billing.models import AuditLog, WebhookEvent, WebhookEventStatus
from billing.worker import Worker
from tests import worker_process
from webhooks import store
from webhooks.process import Outcome
from webhooks.registry import HANDLERS, Registration

ROOT = Path(__file__).resolve().parent.parent
LEASE = 120
START_DEADLINE = 60.0


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """The test app with a two-minute lease (as the worker processes have by default)."""
    app_config["WORKER_LEASE"] = LEASE
    return app_config


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test handlers of the worker processes, in this process too."""
    monkeypatch.setitem(
        HANDLERS, worker_process.COUNTED, Registration(worker_process.count_effect, why="counts")
    )


def stored_events(session: Session, event_type: str, count: int, clock: FixedClock) -> list[str]:
    """Store ``count`` events of ``event_type`` as the intake would (committed); their ids."""
    ids = []
    for _ in range(count):
        event = {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": event_type,
            "created": int(clock.now().timestamp()),
            "data": {"object": {"id": "obj_1", "object": "test"}},
        }
        store.store(session, event, now=clock.now())
        ids.append(event["id"])
    session.commit()
    return ids


def effects_per_event(session: Session) -> Counter[str]:
    """How many effects each event had (committed ones only)."""
    session.expire_all()
    rows = session.scalars(select(AuditLog).where(AuditLog.action == "test.counted"))
    return Counter(str(row.details["event"]) for row in rows)


def spawn(
    database_url: str, clock: FixedClock, name: str, workdir: Path, **paths: Path
) -> subprocess.Popen[str]:
    """Start a worker process (see :mod:`tests.worker_process`)."""
    options = [f"--{key.replace('_', '-')}={value}" for key, value in paths.items()]
    with (workdir / f"{name}.log").open("w") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.worker_process",
                f"--database-url={database_url}",
                f"--now={clock.now().isoformat()}",
                f"--name={name}",
                *options,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


def kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL the worker process (if it still runs) and reap it."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    if process.stdout is not None:
        process.stdout.close()


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[str], what: str) -> None:
    """Wait for a worker process to reach a point (it signals with a file); fail if it dies."""
    deadline = time.monotonic() + START_DEADLINE
    while not ready():
        assert process.poll() is None, f"the worker process exited before {what}"
        assert time.monotonic() < deadline, f"the worker process never got to {what}"
        time.sleep(0.02)


def kill_in_the_handler(database_url: str, clock: FixedClock, workdir: Path) -> None:
    """Start a worker process named ``doomed`` and SIGKILL it once it is inside a handler."""
    marker = workdir / "in-the-handler"
    doomed = spawn(database_url, clock, "doomed", workdir, hang_marker=marker)
    try:
        wait_until(marker.exists, doomed, "the handler")
    finally:
        kill(doomed)
    assert doomed.returncode == -signal.SIGKILL


def test_a_worker_killed_in_the_middle_of_a_handler_leaves_its_event_to_be_handled_later_once(
    app: Flask,
    database_url: str,
    session: Session,
    clock: FixedClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    [event_id] = stored_events(session, worker_process.HANG, 1, clock)
    kill_in_the_handler(database_url, clock, tmp_path)

    session.expire_all()
    row = store.by_stripe_id(session, event_id)
    assert row is not None
    assert (row.status, row.attempts, row.locked_by) == (WebhookEventStatus.RECEIVED, 1, "doomed")
    assert row.locked_until == clock.now() + timedelta(seconds=LEASE)
    assert effects_per_event(session) == Counter(), "the half-done handler wrote nothing"

    monkeypatch.setitem(
        HANDLERS, worker_process.HANG, Registration(worker_process.count_effect, why="fixed")
    )
    assert not Worker(app, name="survivor").run_once(), "the dead worker's lease still holds"
    clock.advance(seconds=LEASE)
    assert Worker(app, name="survivor").run_once().events == {Outcome.PROCESSED: 1}
    assert effects_per_event(session) == Counter({event_id: 1})
    session.expire_all()
    row = store.by_stripe_id(session, event_id)
    assert row is not None
    assert (row.status, row.attempts, row.locked_by) == (WebhookEventStatus.PROCESSED, 2, None)


def test_an_event_stuck_with_a_killed_worker_is_listed_and_replayed_by_replay_events_stuck(
    app: Flask,
    runner: FlaskCliRunner,
    database_url: str,
    session: Session,
    clock: FixedClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    [event_id] = stored_events(session, worker_process.HANG, 1, clock)
    kill_in_the_handler(database_url, clock, tmp_path)
    monkeypatch.setitem(
        HANDLERS, worker_process.HANG, Registration(worker_process.count_effect, why="fixed")
    )
    assert "No stuck events" in runner.invoke(args=["billing", "replay-events", "--stuck"]).output
    clock.advance(seconds=LEASE)
    result = runner.invoke(args=["billing", "replay-events", "--stuck"])
    assert result.exit_code == 0, result.output
    assert f"{event_id} {worker_process.HANG}: processed" in result.output
    assert effects_per_event(session) == Counter({event_id: 1})


@pytest.mark.postgres_only
def test_two_worker_processes_racing_over_a_thousand_events_handle_each_exactly_once(
    app: Flask,
    database_url: str,
    session: Session,
    clock: FixedClock,
    tmp_path: Path,
    counted: None,
) -> None:
    if db.engine().dialect.name != "postgresql":
        pytest.fail("run with TEST_DATABASE_URL pointing at PostgreSQL (make test does)")
    ids = stored_events(session, worker_process.COUNTED, 1000, clock)
    go = tmp_path / "go"
    readies = [tmp_path / f"ready-{n}" for n in range(2)]
    workers = [
        spawn(database_url, clock, f"racer-{n}", tmp_path, ready=readies[n], go=go)
        for n in range(2)
    ]
    try:
        for ready, process in zip(readies, workers, strict=True):
            wait_until(ready.exists, process, "its start")
        go.touch()
        outputs = [process.communicate(timeout=300)[0] for process in workers]
    finally:
        for process in workers:
            kill(process)
    assert [process.returncode for process in workers] == [0, 0], outputs
    handled = [json.loads(output.strip().splitlines()[-1])["events"] for output in outputs]
    assert sum(counts.get("processed", 0) for counts in handled) == 1000
    assert all(counts.get("processed", 0) > 0 for counts in handled), handled
    assert all(set(counts) == {"processed"} for counts in handled), handled
    assert effects_per_event(session) == Counter(dict.fromkeys(ids, 1))
    session.expire_all()
    rows = session.execute(select(WebhookEvent.status, WebhookEvent.attempts)).all()
    assert Counter(rows) == Counter({(WebhookEventStatus.PROCESSED, 1): 1000})
