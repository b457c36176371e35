"""Prometheus metrics of Tollgate, served at ``/metrics``.

Under gunicorn each worker counts for itself; set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory (before the workers start) and ``/metrics`` adds up every worker's counts.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session

WEBHOOK_DELIVERIES = Counter(
    "tollgate_webhook_deliveries",
    "Stripe deliveries answered by the intake, by outcome (stored, duplicate, unhandleable, "
    "invalid_signature, invalid_payload, payload_too_large).",
    ["outcome"],
)
WEBHOOK_EVENTS = Counter(
    "tollgate_webhook_events",
    "Attempts of the worker at stored Stripe events, by type and outcome (processed, ignored, "
    "duplicate, failed: retried later, dead: given up).",
    ["type", "outcome"],
)
MAILS = Counter(
    "tollgate_mails",
    "Attempts of the worker at outbox mails, by outcome (sent, failed: retried later, dead).",
    ["outcome"],
)
ENTITLEMENT_DECISIONS = Counter(
    "tollgate_entitlement_decisions",
    "Entitlement decisions the API answered with, by reason (granted and refused alike).",
    ["reason"],
)


def exposition(session: Session | None = None) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, with its content type; with ``session``, also
    the backlog of the event log and the outbox by status, read from the database."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest()
    if session is not None:
        body += backlog(session)
    return body, CONTENT_TYPE_LATEST


def backlog(session: Session) -> bytes:
    """How many webhook events and mails are in each not-done status, as gauges (read now)."""
    from billing.models import MailStatus, OutboxMessage, WebhookEvent, WebhookEventStatus

    families = []
    tables = (
        (
            "tollgate_webhook_events_backlog",
            "Stored Stripe events not handled (yet), by status: received, failed, dead.",
            WebhookEvent,
            (WebhookEventStatus.RECEIVED, WebhookEventStatus.FAILED, WebhookEventStatus.DEAD),
        ),
        (
            "tollgate_mail_outbox_backlog",
            "Outbox mails not sent (yet), by status: pending, failed, dead.",
            OutboxMessage,
            (MailStatus.PENDING, MailStatus.FAILED, MailStatus.DEAD),
        ),
    )
    for name, documentation, model, statuses in tables:
        family = GaugeMetricFamily(name, documentation, labels=["status"])
        counts = dict(
            session.execute(
                select(model.status, func.count())
                .where(model.status.in_(statuses))
                .group_by(model.status)
            ).all()
        )
        for status in statuses:
            family.add_metric([status.value], counts.get(status, 0))
        families.append(family)
    registry = CollectorRegistry()
    registry.register(_Families(families))
    return generate_latest(registry)


class _Families:
    """A collector of metric families computed beforehand (the backlog, read per scrape)."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[GaugeMetricFamily]:
        """The families, as computed."""
        return self.families
