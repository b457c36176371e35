"""Finance reports, one module per report; :data:`REPORTS` lists them by name.

Each report module keeps its queries to itself (so a renamed column is changed in one place) and
exposes a :class:`~billing.services.reports.base.Report` as ``REPORT``. Exports of any report go
through :mod:`billing.services.reports.export`, and each is written to the audit log by
:func:`record_export`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from billing.errors import NotFound
from billing.models import Reader
from billing.services import audit
from billing.services.reports import churn, dunning, groups, invoices, mrr, trials, vat
from billing.services.reports.base import Filters, Report

REPORTS: dict[str, Report] = {
    module.REPORT.name: module.REPORT
    for module in (invoices, vat, mrr, trials, churn, groups, dunning)
}


def get(name: str) -> Report:
    """The report called ``name``; :class:`~billing.errors.NotFound` when there is none."""
    try:
        return REPORTS[name]
    except KeyError:
        raise NotFound(f"There is no report called {name!r}.", field="report") from None


def record_export(
    session: Session,
    *,
    now: datetime,
    actor: Reader | str,
    report: Report,
    filters: Filters,
    fmt: str,
    rows: int,
    completed: bool = True,
    ip: str | None = None,
) -> Any:
    """Write an export to the audit log: who, which report, which filters, how many rows."""
    return audit.record(
        session,
        now=now,
        actor=actor,
        action="report.exported" if completed else "report.export_aborted",
        details={
            "report": report.name,
            "filters": filters.describe(),
            "format": fmt,
            "rows": rows,
        },
        ip=ip,
    )
