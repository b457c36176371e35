"""The audit log for admins: browse and filter it (newest first), export it as CSV or XLSX.

These routes join the staff blueprint (``/staff/audit``). Exports are audit-logged themselves.
"""

from __future__ import annotations

from datetime import timedelta

from flask import render_template, request
from flask.typing import ResponseReturnValue

from billing import db
from billing.clock import current_clock
from billing.services.reports import audit_log
from billing.services.reports.base import Report, parse_filters
from billing.views import guards
from billing.views.staff import bp
from billing.views.staff_reports import PAGE_ROWS, send_export

EXTRA_FIELDS = ("actor", "action", "subject")


def _report() -> tuple[Report, audit_log.AuditFilters]:
    extra = audit_log.AuditFilters(
        **{
            name: request.args.get(name, "").strip()[: audit_log.TEXT_MAX_LENGTH]
            for name in EXTRA_FIELDS
        }
    )
    return audit_log.report(extra), extra


@bp.get("/audit")
@guards.staff_required()
def audit_page() -> str:
    """The audit log: the newest 500 entries of the range that match the filters."""
    report, extra = _report()
    today = current_clock().now().date()
    values = {
        "from": request.args.get("from") or (today - timedelta(days=30)).isoformat(),
        "to": request.args.get("to") or today.isoformat(),
    }
    filters = parse_filters(values, today=today, report=report)
    table = report.build(db.session(), filters, current_clock().now(), PAGE_ROWS)
    query = {k: v for k, v in request.args.items() if k in (*EXTRA_FIELDS, "from", "to") and v}
    return render_template(
        "staff/audit.html",
        table=table,
        filters=filters,
        extra=extra,
        query=query,
        page_rows=PAGE_ROWS,
    )


@bp.get("/audit/export")
@guards.staff_required()
def audit_export() -> ResponseReturnValue:
    """The audit log of the range and filters as a CSV or XLSX file (oldest first)."""
    report, _ = _report()
    return send_export(report)
