"""The worker: handles stored Stripe events and sends outbox mails, after the request is over.

``flask --app app billing worker`` runs one (``--once``: everything due now, then exit, for cron
and tests). Run as many as you like on as many nodes: they share the work through leases on the
rows (:mod:`billing.leases`), claimed with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite
run one. Each event and each mail is retried with exponential backoff until it succeeds or runs
out of attempts (then it is dead, counted in ``/metrics`` and replayable); a worker that dies
mid-way leaves its claims to expire after ``WORKER_LEASE``, and another worker takes them over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask

from billing import db
from billing.clock import current_clock
from billing.leases import RetryPolicy
from billing.metrics import MAILS
from billing.services import mail

if TYPE_CHECKING:
    from webhooks.process import Outcome

log = logging.getLogger(__name__)
BATCH = 20
"""Rows claimed at once: small, so a busy worker leaves work for the others."""


def worker_name() -> str:
    """A name unique to this worker: host, process, and a random part (for several per process)."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def replay(row_id: int, gateway: Any, *, policy: RetryPolicy, worker: str) -> Outcome | None:
    """Handle the stored webhook event ``row_id`` again now, whatever its schedule, as ``worker``
    (``replay-events`` and the support page); None when a live worker holds it."""
    from webhooks import store
    from webhooks.process import process

    with db.new_session() as session:
        claimed = store.claim_for_replay(
            session, row_id, now=current_clock().now(), worker=worker, lease=policy.lease
        )
        session.commit()
    if not claimed:
        return None
    return process(row_id, gateway, worker=worker, policy=policy)


@dataclass
class Tally:
    """What a worker's pass did: outcomes of events and of mails."""

    events: Counter[str] = field(default_factory=Counter)
    mails: Counter[str] = field(default_factory=Counter)

    def __bool__(self) -> bool:
        return bool(self.events or self.mails)

    def add(self, other: Tally) -> None:
        """Count ``other``'s outcomes in too."""
        self.events.update(other.events)
        self.mails.update(other.mails)

    def summary(self) -> str:
        """One line: the outcomes of events and mails."""

        def words(counts: Counter[str]) -> str:
            return ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "none"

        return f"events: {words(self.events)}; mails: {words(self.mails)}"


class Worker:
    """Claims and handles due webhook events and outbox mails for one Flask app."""

    def __init__(
        self,
        app: Flask,
        *,
        name: str | None = None,
        policy: RetryPolicy | None = None,
        batch: int = BATCH,
    ) -> None:
        """A worker for ``app`` (its settings, database, gateway and mail backend)."""
        self.app = app
        self.name = name or worker_name()
        self.policy = policy or RetryPolicy.from_config(dict(app.config))
        self.batch = batch

    def run_once(self) -> Tally:
        """Handle everything due now, batch after batch, until nothing due is left unclaimed."""
        tally = Tally()
        while True:
            batch = self.step()
            if not batch:
                return tally
            tally.add(batch)

    def step(self) -> Tally:
        """Claim one batch of due events and one of due mails, and handle them."""
        from webhooks.process import process

        tally = Tally()
        with self.app.app_context():
            gateway = self.app.extensions["stripe_gateway"]
            backend = self.app.extensions["mail_backend"]
            for event_id in self._claim(self._claim_events):
                tally.events[process(event_id, gateway, worker=self.name, policy=self.policy)] += 1
            for mail_id in self._claim(self._claim_mails):
                session = db.new_session()
                try:
                    status = mail.deliver_claimed(
                        session, mail_id, backend, worker=self.name, policy=self.policy
                    )
                finally:
                    session.close()
                outcome = "taken over" if status is None else status.value
                MAILS.labels(outcome=outcome).inc()
                tally.mails[outcome] += 1
        return tally

    def run_forever(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set, waiting ``WORKER_POLL_INTERVAL`` seconds when idle.

        An error outside any one event or mail (the database gone) is logged and retried after
        the interval, so a worker outlives an outage.
        """
        interval = float(self.app.config["WORKER_POLL_INTERVAL"])
        while not stop.is_set():
            try:
                busy = bool(self.step())
            except Exception:
                log.exception("worker %s: pass failed; trying again", self.name)
                busy = False
            if not busy:
                stop.wait(interval)

    def _claim(self, claim: Any) -> list[int]:
        session = db.new_session()
        try:
            ids: list[int] = claim(session)
            session.commit()
            return ids
        finally:
            session.close()

    def _claim_events(self, session: Any) -> list[int]:
        from webhooks import store

        return store.claim_due(
            session,
            now=current_clock().now(),
            worker=self.name,
            lease=self.policy.lease,
            limit=self.batch,
        )

    def _claim_mails(self, session: Any) -> list[int]:
        return mail.claim_due(
            session,
            now=current_clock().now(),
            worker=self.name,
            policy=self.policy,
            limit=self.batch,
        )
