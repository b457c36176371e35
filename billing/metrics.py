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

WEBHOOK_EVENTS = Counter(
    "tollgate_webhook_events",
    "Stripe events handled, by type and outcome (processed, ignored, duplicate, failed).",
    ["type", "outcome"],
)
ENTITLEMENT_DECISIONS = Counter(
    "tollgate_entitlement_decisions",
    "Entitlement decisions the API answered with, by reason (granted and refused alike).",
    ["reason"],
)


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, with its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
