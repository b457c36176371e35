"""Finance reports as staff pages (role ``finance``; admins too), with CSV and XLSX exports.

These routes join the staff blueprint: ``/staff/reports`` lists the reports,
``/staff/reports/<name>`` shows one with its filters and totals, and
``/staff/reports/<name>/export?format=csv|xlsx`` streams the same rows and totals as a file.
Every export is written to the audit log with who asked, the filters and the row count.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO

from flask import Response, render_template, request, stream_with_context
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from billing import db
from billing.clock import current_clock
from billing.errors import ValidationFailed
from billing.models import Plan, Reader, StaffRole
from billing.services import reports
from billing.services.reports import export as exporting
from billing.services.reports.base import (
    FILTER_FIELDS,
    Filters,
    Granularity,
    Owner,
    Report,
    parse_filters,
)
from billing.views import guards
from billing.views.staff import bp

PAGE_ROWS = 500
"""Rows shown on a page; the totals and the exports cover every row."""


def _filters(report: Report) -> Filters:
    values = {name: request.args.get(name) for name in FILTER_FIELDS}
    return parse_filters(values, today=current_clock().now().date(), report=report)


@bp.get("/reports")
@guards.staff_required(StaffRole.FINANCE)
def reports_index() -> str:
    """The list of reports."""
    return render_template("staff/reports/index.html", reports=reports.REPORTS.values())


@bp.get("/reports/<name>")
@guards.staff_required(StaffRole.FINANCE)
def report_page(name: str) -> str:
    """One report: its filters, its rows (the first 500), its totals and export links."""
    report = reports.get(name)
    filters = _filters(report)
    session = db.session()
    table = report.build(session, filters, current_clock().now(), PAGE_ROWS)
    plans = session.scalars(select(Plan.code).order_by(Plan.code)).all()
    return render_template(
        "staff/reports/report.html",
        report=report,
        filters=filters,
        table=table,
        plans=plans,
        owners=list(Owner),
        granularities=list(Granularity),
        page_rows=PAGE_ROWS,
        query={k: v for k, v in request.args.items() if k in FILTER_FIELDS and v},
    )


@bp.get("/reports/<name>/export")
@guards.staff_required(StaffRole.FINANCE)
def report_export(name: str) -> ResponseReturnValue:
    """The report as a CSV (streamed) or XLSX file, with the same rows and totals as the page."""
    return send_export(reports.get(name))


def send_export(report: Report) -> ResponseReturnValue:
    """Answer with ``report`` for the request's filters as a file (``format`` csv or xlsx), and
    write the export to the audit log once it is complete (or cut short)."""
    filters = _filters(report)
    try:
        fmt = exporting.Format(request.args.get("format", "csv"))
    except ValueError:
        raise ValidationFailed("Choose csv or xlsx.", field="format") from None
    actor_id, ip = guards.reader().id, request.remote_addr
    now = current_clock().now()
    headers = {
        "Content-Disposition": f"attachment; filename={exporting.file_name(report, filters, fmt)}"
    }
    progress = exporting.Progress()

    def log(completed: bool) -> None:
        with db.new_session() as own:
            reports.record_export(
                own,
                now=now,
                actor=own.get_one(Reader, actor_id),
                report=report,
                filters=filters,
                fmt=fmt.value,
                rows=progress.rows,
                completed=completed,
                ip=ip,
            )
            own.commit()

    if fmt == exporting.Format.CSV:

        def stream() -> Iterator[bytes]:
            completed = False
            try:
                yield from exporting.csv_chunks(db.session(), report, filters, now, progress)
                completed = True
            finally:
                log(completed)

        return Response(stream_with_context(stream()), mimetype=fmt.mimetype, headers=headers)
    file = tempfile.TemporaryFile()
    try:
        exporting.write_xlsx(db.session(), report, filters, now, file, progress)
    except BaseException:
        file.close()
        raise
    log(True)
    file.seek(0)
    return Response(_read(file), mimetype=fmt.mimetype, headers=headers, direct_passthrough=True)


def _read(file: IO[bytes]) -> Iterator[bytes]:
    """A file's bytes in 64 KiB pieces, closing it at the end."""
    with file:
        while piece := file.read(exporting.CHUNK_BYTES):
            yield piece
