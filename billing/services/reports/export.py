"""Exports of any report as CSV or XLSX, in constant memory whatever the size.

- **CSV on PostgreSQL** (a report with a ``statement``): the query runs inside psycopg's
  ``COPY (...) TO STDOUT WITH (FORMAT csv)``, with every value already formatted in SQL (money in
  major units, times in UTC, text guarded against spreadsheet formulae), and COPY's many small
  pieces are gathered into chunks of about 64 KiB.
- **CSV elsewhere** (SQLite, and reports built in Python): the rows are read as a stream
  (``yield_per``) and formatted by :func:`format_value`, which writes what the SQL writes.
- **One snapshot**: on PostgreSQL an export reads its rows and its totals in one read-only
  ``REPEATABLE READ`` snapshot (:func:`one_snapshot`), so they agree to the cent even while
  invoices are written; the CSV's totals are read on a second connection in the same snapshot
  while the rows stream (:func:`_in_snapshot`).
- **XLSX**: XlsxWriter in ``constant_memory`` mode (each row is flushed to disk as it is
  written), to a temporary file; numbers are numbers, times are times, text is never a formula.
  How each column is written is decided once per sheet (:func:`_row_writer`), so a row costs one
  conversion per value and one ``write_row`` per run of columns sharing a format; the rest of
  the time is XlsxWriter's own XML per cell.

Every file has a header row, then the rows, then the totals (after an empty row), then any further
sections of the report. UTF-8, with the report and the range in the file name.
"""

from __future__ import annotations

import contextvars
import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import IO, Any

from sqlalchemy import Date, Numeric, String, case, cast, func, literal_column, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from billing.services.reports.base import Column, Filters, Kind, Report, Table, major

CHUNK_BYTES = 64 * 1024
YIELD_PER = 2000
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A text cell starting with one of these is read as a formula by spreadsheets: it gets a ``'``."""


class Format(StrEnum):
    """The file formats an export can take."""

    CSV = "csv"
    XLSX = "xlsx"

    @property
    def mimetype(self) -> str:
        """The media type of a file in this format."""
        if self == Format.CSV:
            return "text/csv; charset=utf-8"
        return "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@dataclass
class Progress:
    """Counts the rows written; calls ``report`` every ``every`` rows (the CLI's progress line)."""

    every: int = 100_000
    report: Callable[[int], None] | None = None
    rows: int = 0

    def add(self, count: int) -> None:
        """Count ``count`` more rows."""
        before = self.rows
        self.rows += count
        if self.report is not None and self.rows // self.every > before // self.every:
            self.report(self.rows)


def file_name(report: Report, filters: Filters, fmt: Format) -> str:
    """``invoices_2026-10-01_2026-10-31.csv``: the report and its range."""
    return f"{report.name}_{filters.slug()}.{fmt.value}"


def format_value(value: Any, kind: Kind) -> str:
    """A value as CSV text: money in major units (``12.00``), UTC times, guarded text."""
    if value is None:
        return ""
    if kind == Kind.MONEY:
        return str(major(int(value)))
    if kind == Kind.DATETIME:
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}"
    if kind == Kind.DATE:
        return value.isoformat() if isinstance(value, date) else str(value)
    if kind == Kind.PERCENT:
        return str((Decimal(value) * 100).quantize(Decimal("0.01")))
    if kind in (Kind.INT, Kind.DECIMAL):
        return str(value)
    text = value.value if isinstance(value, StrEnum) else str(value)
    if kind == Kind.CODE:
        return text
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_chunks(
    session: Session,
    report: Report,
    filters: Filters,
    now: datetime,
    progress: Progress,
) -> Iterator[bytes]:
    """The report as CSV, in chunks of about 64 KiB (UTF-8, header row first, totals last)."""
    buffer = _Buffer()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c.label for c in report.columns])
    with one_snapshot(session) as (reading, snapshot):
        if report.statement is not None and snapshot is not None:
            yield from buffer.take()
            with ThreadPoolExecutor(1, thread_name_prefix="export-totals") as alongside:
                context = contextvars.copy_context()  # the app context too, for ``build``
                totals = alongside.submit(
                    context.run, _in_snapshot, reading, snapshot, report, filters, now
                )
                yield from _copy_chunks(reading, report, filters, progress)
                table = totals.result()
        elif report.statement is not None:
            kinds = [c.kind for c in report.columns]
            result = reading.execute(
                report.statement(filters).execution_options(yield_per=YIELD_PER)
            )
            for partition in result.partitions():
                for row in partition:
                    writer.writerow([format_value(v, k) for v, k in zip(row, kinds, strict=True)])
                progress.add(len(partition))
                yield from buffer.take_if_full()
            table = report.build(reading, filters, now, 0)
        else:
            table = report.build(reading, filters, now, None)
            _write_rows(writer, report.columns, table.rows)
            progress.add(len(table.rows))
    _write_tail(writer, report.columns, table)
    yield from buffer.take()


@contextmanager
def one_snapshot(session: Session) -> Iterator[tuple[Session, str | None]]:
    """Where an export reads its rows and its totals, so that they agree to the cent even while
    invoices are being written: a session, and on PostgreSQL the id of its snapshot.

    On PostgreSQL a read-only ``REPEATABLE READ`` transaction on a connection of its own (the
    caller's session is left alone), whose snapshot is exported (``pg_export_snapshot``) so that
    a second connection can read the very same data at the same time (:func:`_in_snapshot`), as
    ``pg_dump --jobs`` does. Elsewhere (SQLite) the caller's session: its one transaction already
    reads one snapshot.
    """
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        yield session, None
        return
    with _snapshot_connection(bind.engine) as connection:
        snapshot = connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
        with Session(bind=connection) as reading:
            yield reading, str(snapshot)


@contextmanager
def _snapshot_connection(engine: Engine, snapshot: str | None = None) -> Iterator[Connection]:
    """A connection in a read-only ``REPEATABLE READ`` transaction, taking ``snapshot`` if given;
    rolled back at the end (it wrote nothing)."""
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="REPEATABLE READ")
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        if snapshot is not None:
            if not _SNAPSHOT_ID.fullmatch(snapshot):
                raise ValueError(f"not a PostgreSQL snapshot id: {snapshot!r}")
            connection.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        try:
            yield connection
        finally:
            connection.rollback()


_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")


def _in_snapshot(
    reading: Session, snapshot: str, report: Report, filters: Filters, now: datetime
) -> Table:
    """The report's totals (its ``build`` without rows), read on another connection in the
    export's snapshot while the export streams its rows: they see exactly the same invoices."""
    engine = reading.get_bind().engine
    with _snapshot_connection(engine, snapshot) as connection, Session(bind=connection) as own:
        return report.build(own, filters, now, 0)


def _write_rows(writer: Any, columns: Sequence[Column], rows: Iterable[tuple[Any, ...]]) -> None:
    kinds = [c.kind for c in columns]
    for row in rows:
        writer.writerow([format_value(v, k) for v, k in zip(row, kinds, strict=True)])


def _write_tail(writer: Any, columns: Sequence[Column], table: Table) -> None:
    if table.totals:
        writer.writerow([])
        _write_rows(writer, columns, table.totals)
    for title, section in table.sections.items():
        writer.writerow([])
        writer.writerow([title])
        writer.writerow([c.label for c in section.columns])
        _write_rows(writer, section.columns, section.rows)
        if section.totals:
            _write_rows(writer, section.columns, section.totals)


class _Buffer(io.StringIO):
    """Text gathered by the csv writer, handed out as UTF-8 chunks."""

    def take(self) -> Iterator[bytes]:
        text = self.getvalue()
        if text:
            self.seek(0)
            self.truncate()
            yield text.encode("utf-8")

    def take_if_full(self) -> Iterator[bytes]:
        if self.tell() >= CHUNK_BYTES:
            yield from self.take()


# --- PostgreSQL: COPY with the formatting in SQL ------------------------------------------------


def _sql_format(column: Any, kind: Kind) -> Any:
    """The SQL that writes ``column`` as :func:`format_value` does.

    PostgreSQL's own output writes the values, which is several times faster than ``to_char``
    or ``round``: with ``DateStyle`` ISO (set by :func:`_copy_chunks`) a ``timestamp`` is
    written ``2026-01-31 09:00:00`` and a ``date`` ``2026-01-31``; an integer times the numeric
    ``0.01`` is exact and has two decimals (``1234`` is ``12.34``, ``-5`` is ``-0.05``).
    """
    if kind == Kind.MONEY:
        return column * _HUNDREDTH
    if kind == Kind.DATETIME:
        return func.date_trunc("second", func.timezone("UTC", column))
    if kind == Kind.DATE:
        return cast(column, Date)
    if kind == Kind.PERCENT:
        return func.round(cast(column, Numeric) * 100, 2)
    if kind in (Kind.INT, Kind.DECIMAL):
        return column
    if kind == Kind.CODE:
        return cast(column, String)
    return _guarded(column)


def copy_sql(session: Session, report: Report, filters: Filters) -> tuple[str, dict[str, Any]]:
    """The ``COPY (SELECT ...) TO STDOUT`` statement of a report and its parameters."""
    assert report.statement is not None
    inner = report.statement(filters).subquery("report")
    formatted = []
    for column, spec in zip(inner.c, report.columns, strict=True):
        formatted.append(_sql_format(column, spec.kind).label(spec.key))
    compiled = select(*formatted).compile(
        dialect=session.get_bind().dialect, compile_kwargs={"render_postcompile": True}
    )
    return f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv)", dict(compiled.params)


def _guarded(column: Any) -> Any:
    """Text that a spreadsheet would take for a formula gets a leading ``'``, in SQL (by the
    code point of its first character: integers compare faster than one-character texts)."""
    text = cast(column, String)
    return case(
        (func.ascii(text).in_(_FORMULA_CODES), literal_column("''''") + text),
        else_=text,
    )


_HUNDREDTH = literal_column("0.01", Numeric)
_FORMULA_CODES: list[Any] = [literal_column(str(ord(start))) for start in FORMULA_STARTS]


def _copy_chunks(
    session: Session, report: Report, filters: Filters, progress: Progress
) -> Iterator[bytes]:
    sql, params = copy_sql(session, report, filters)
    connection = session.connection().connection.driver_connection
    assert connection is not None
    pending = bytearray()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        with cursor.copy(sql, params) as copy:
            for data in copy:  # a row each time, in a view valid until the next
                pending += data
                if len(pending) >= CHUNK_BYTES:
                    chunk = bytes(pending)
                    pending.clear()
                    progress.add(chunk.count(b"\n"))
                    yield chunk
    if pending:
        chunk = bytes(pending)
        progress.add(chunk.count(b"\n"))
        yield chunk


# --- XLSX -----------------------------------------------------------------------------------------

EXCEL_EPOCH = datetime(1899, 12, 30, tzinfo=UTC)
"""Day 0 of Excel's serial dates (1900 system, for every day after 1 March 1900)."""

RowWriter = Callable[[int, Sequence[Any]], None]
"""Writes one row's raw values at a row number of a sheet."""


def _excel_moment(value: datetime) -> float:
    """An aware moment as an Excel serial date-time (days since :data:`EXCEL_EPOCH`, in UTC), as
    XlsxWriter's ``write_datetime`` computes it."""
    delta = value - EXCEL_EPOCH
    return delta.days + (delta.seconds + delta.microseconds / 1e6) / 86400


def _excel_day(value: Any) -> Any:
    if not isinstance(value, date):
        return str(value)
    return float((value - EXCEL_EPOCH.date()).days)


def _excel_text(value: Any) -> str:
    if value.__class__ is str:
        return str(value)
    return value.value if isinstance(value, StrEnum) else str(value)


_EXCEL_VALUE: dict[Kind, Callable[[Any], Any]] = {
    Kind.MONEY: lambda value: int(value) / 100,
    Kind.INT: float,
    Kind.DECIMAL: float,
    Kind.PERCENT: float,
    Kind.DATETIME: _excel_moment,
    Kind.DATE: _excel_day,
    Kind.TEXT: _excel_text,
    Kind.CODE: _excel_text,
}
"""What each kind of value is written as: a number (money in major units: ``int / 100`` is the
double nearest the exact amount, as ``float(Decimal)`` is), a serial date, or text."""


def _row_writer(
    sheet: Any, columns: Sequence[Column], styles: dict[Kind, Any], text_style: Any = None
) -> RowWriter:
    """A function that writes a row of ``columns`` to ``sheet``, fast: the work per column is
    decided once here, and each run of neighbouring columns of one cell format is written by
    one ``write_row`` (``text_style`` is the format of the text and number columns: bold for
    totals). Dates and text that is not a date are told apart per cell, as a page would."""
    formats = [styles.get(c.kind, text_style) for c in columns]
    converters = [_EXCEL_VALUE[c.kind] for c in columns]
    runs: list[tuple[int, int, Any, list[Callable[[Any], Any]]]] = []
    start = 0
    for index in range(1, len(columns) + 1):
        if index == len(columns) or formats[index] is not formats[start]:
            runs.append((start, index, formats[start], converters[start:index]))
            start = index
    write_row = sheet.write_row

    def write(row_number: int, row: Sequence[Any]) -> None:
        for first, stop, cell_format, convert in runs:
            values = [
                None if value is None else to(value)
                for to, value in zip(convert, row[first:stop], strict=True)
            ]
            write_row(row_number, first, values, cell_format)

    return write


def write_xlsx(
    session: Session,
    report: Report,
    filters: Filters,
    now: datetime,
    out: IO[bytes] | str,
    progress: Progress,
) -> None:
    """Write the report as an XLSX workbook to ``out`` (a path or a binary file) in constant
    memory: a sheet with the header, rows and totals, and a sheet per further section."""
    import xlsxwriter

    workbook = xlsxwriter.Workbook(
        out,
        {
            "constant_memory": True,
            "strings_to_numbers": False,
            "strings_to_formulas": False,
            "strings_to_urls": False,
        },
    )
    styles = {
        Kind.MONEY: workbook.add_format({"num_format": "#,##0.00"}),
        Kind.DATETIME: workbook.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"}),
        Kind.DATE: workbook.add_format({"num_format": "yyyy-mm-dd"}),
        Kind.PERCENT: workbook.add_format({"num_format": "0.00%"}),
    }
    bold = workbook.add_format({"bold": True})
    sheet = workbook.add_worksheet(report.title[:31])
    row_number = _xlsx_header(sheet, report.columns, bold)
    write = _row_writer(sheet, report.columns, styles)
    with one_snapshot(session) as (reading, _snapshot):
        if report.statement is not None:
            result = reading.execute(
                report.statement(filters).execution_options(yield_per=YIELD_PER)
            )
            for partition in result.partitions():
                for found in partition:
                    write(row_number, found)
                    row_number += 1
                progress.add(len(partition))
            table = report.build(reading, filters, now, 0)
        else:
            table = report.build(reading, filters, now, None)
            for row in table.rows:
                write(row_number, row)
                row_number += 1
            progress.add(len(table.rows))
    if table.totals:
        row_number += 1
        write_total = _row_writer(sheet, report.columns, styles, bold)
        for total in table.totals:
            write_total(row_number, total)
            row_number += 1
    for title, section in table.sections.items():
        extra = workbook.add_worksheet(title[:31])
        position = _xlsx_header(extra, section.columns, bold)
        write_line = _row_writer(extra, section.columns, styles)
        for line in [*section.rows, *section.totals]:
            write_line(position, line)
            position += 1
    workbook.close()


def _xlsx_header(sheet: Any, columns: Sequence[Column], bold: Any) -> int:
    for index, column in enumerate(columns):
        sheet.set_column(index, index, max(10, min(40, len(column.label) + 4)))
    for index, column in enumerate(columns):
        sheet.write_string(0, index, column.label, bold)
    sheet.freeze_panes(1, 0)
    return 1
