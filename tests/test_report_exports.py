"""Exports: CSV and XLSX that open, match the page's totals, stream in bounded memory, and are
audit-logged; the ``billing export`` command with its progress line."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import tracemalloc
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import event, insert, select
from sqlalchemy.orm import Session

from billing import db as billing_db
from billing.clock import FixedClock
from billing.models import AuditLog, Invoice, InvoiceStatus, StaffRole, TrialStatus
from billing.services import reports
from billing.services.reports import export
from billing.services.reports.base import Filters
from tests import factories
from tests.conftest import TEST_SECRET
from tests.helpers import login

ROOT = Path(__file__).resolve().parent.parent
NOVEMBER = Filters(start=date(2026, 11, 1), end=date(2026, 11, 30))


@pytest.fixture
def november_invoices(session: Session) -> list[Invoice]:
    """Four November invoices: two paid by readers, one open, one paid by a group whose name
    looks like a spreadsheet formula; and one October invoice outside the range."""
    day = factories.NOW.replace(day=3)
    paid = factories.InvoiceFactory(created_at=day)
    refunded = factories.InvoiceFactory(
        created_at=day + timedelta(days=1), amount_refunded=500, customer_country="NL"
    )
    factories.InvoiceFactory(
        created_at=day + timedelta(days=2), status=InvoiceStatus.OPEN, amount_paid=0
    )
    group = factories.GroupFactory(name='=HYPERLINK("http://evil")')
    customer = factories.CustomerFactory(
        reader=None,
        group_id=group.id,
        email=group.billing_email,
        email_canonical=group.billing_email,
    )
    seats = factories.SubscriptionFactory(
        customer=customer, reader=None, group_id=group.id, quantity=10
    )
    group_invoice = factories.InvoiceFactory(
        subscription=seats, created_at=day + timedelta(days=3), total=96000, tax=16661
    )
    factories.InvoiceFactory(created_at=day - timedelta(days=10))
    return [paid, refunded, group_invoice]


def _csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"))))


@pytest.mark.usefixtures("november_invoices")
def test_the_invoices_csv_has_a_header_every_invoice_in_the_range_and_the_paid_totals(
    session: Session, clock: FixedClock
) -> None:
    report = reports.get("invoices")
    progress = export.Progress()

    data = b"".join(export.csv_chunks(session, report, NOVEMBER, clock.now(), progress))

    rows = _csv_rows(data)
    assert rows[0][:3] == ["Number", "Date (UTC)", "Reader or group"]
    body = rows[1 : rows.index([])]
    assert progress.rows == len(body) == 4
    assert [r[13] for r in body] == ["paid", "paid", "open", "paid"]
    assert body[0][1] == "2026-11-03 09:00:00"
    assert body[0][7:10] == ["9.92", "2.08", "12.00"], "net, VAT, gross in major units"
    assert body[3][2] == '\'=HYPERLINK("http://evil")', "a formula is text"
    assert body[3][3] == "group"
    [totals] = rows[rows.index([]) + 1 :]
    assert totals[0] == "Total: 3 paid"
    assert totals[7:13] == ["813.23", "170.77", "984.00", "984.00", "5.00", "eur"]


@pytest.mark.usefixtures("november_invoices")
def test_the_page_the_csv_and_the_xlsx_show_the_same_totals(
    client: FlaskClient, session: Session, tmp_path: Path
) -> None:
    login(client, factories.reader(staff_role=StaffRole.FINANCE))
    query = "from=2026-11-01&to=2026-11-30"

    page = client.get(f"/staff/reports/invoices?{query}").get_data(as_text=True)
    csv_response = client.get(f"/staff/reports/invoices/export?{query}&format=csv")
    xlsx_response = client.get(f"/staff/reports/invoices/export?{query}&format=xlsx")

    assert "984.00" in page and "170.77" in page and "813.23" in page
    assert csv_response.status_code == 200
    assert csv_response.headers["Content-Disposition"] == (
        "attachment; filename=invoices_2026-11-01_2026-11-30.csv"
    )
    csv_totals = _csv_rows(csv_response.data)[-1]
    assert csv_totals[7:10] == ["813.23", "170.77", "984.00"]
    path = tmp_path / "invoices.xlsx"
    path.write_bytes(xlsx_response.data)
    workbook = openpyxl.load_workbook(path, read_only=True)
    values = list(workbook.active.iter_rows(values_only=True))
    workbook.close()
    assert values[0][0] == "Number"
    assert values[1][7:10] == (9.92, 2.08, 12.0), "numbers as numbers"
    assert values[-1][0] == "Total: 3 paid"
    assert values[-1][7:10] == (813.23, 170.77, 984.0)
    logged = session.scalars(select(AuditLog).where(AuditLog.action == "report.exported")).all()
    assert sorted((e.details["format"], e.details["rows"]) for e in logged) == [
        ("csv", 4),
        ("xlsx", 4),
    ], "the CSV is logged once streamed"
    assert logged[0].details["filters"] == {"start": "2026-11-01", "end": "2026-11-30"}


def test_the_invoices_page_csv_and_xlsx_show_the_vat_country_kind_rate_and_evidence(
    client: FlaskClient, session: Session, clock: FixedClock, tmp_path: Path
) -> None:
    day = factories.NOW.replace(day=3)
    factories.InvoiceFactory(
        created_at=day,
        customer_country="DE",
        tax_country="DE",
        tax_kind="oss",
        tax_rate=Decimal("7.0000"),
        tax_evidence={
            "declared_country": "DE",
            "card_country": "FR",
            "agrees": False,
            "confirmed_by_reader": True,
        },
    )
    factories.InvoiceFactory(
        created_at=day + timedelta(days=1),
        tax_country="BE",
        tax_kind="domestic",
        tax_rate=Decimal("21.0000"),
        tax_evidence={
            "declared_country": "BE",
            "card_country": None,
            "agrees": True,
            "confirmed_by_reader": False,
            "ip_country": "NL",
        },
    )
    factories.InvoiceFactory(created_at=day + timedelta(days=2))
    session.commit()
    report = reports.get("invoices")
    expected = [
        ["DE", "oss", "7.0000", "declared DE, card FR, confirmed by reader"],
        ["BE", "domestic", "21.0000", "declared BE, card unknown, IP NL"],
        ["", "", "", ""],
    ]

    table = report.build(session, NOVEMBER, clock.now(), None)
    data = b"".join(export.csv_chunks(session, report, NOVEMBER, clock.now(), export.Progress()))
    login(client, factories.reader(staff_role=StaffRole.FINANCE))
    page = client.get("/staff/reports/invoices?from=2026-11-01&to=2026-11-30")
    xlsx = client.get("/staff/reports/invoices/export?from=2026-11-01&to=2026-11-30&format=xlsx")

    rows = _csv_rows(data)
    assert rows[0][14:] == ["VAT country", "VAT kind", "VAT rate %", "Country evidence"]
    assert [r[14:] for r in rows[1:4]] == expected
    assert rows[5][14:] == ["", "", "", ""], "the totals row has none"
    assert [list(r[14:17]) for r in table.rows] == [
        ["DE", "oss", Decimal("7")],
        ["BE", "domestic", Decimal("21")],
        [None, None, None],
    ]
    text = page.get_data(as_text=True)
    assert "declared DE, card FR, confirmed by reader" in text and "Country evidence" in text
    path = tmp_path / "invoices.xlsx"
    path.write_bytes(xlsx.data)
    workbook = openpyxl.load_workbook(path, read_only=True)
    values = list(workbook.active.iter_rows(values_only=True))
    workbook.close()
    assert values[1][14:] == ("DE", "oss", 7.0, "declared DE, card FR, confirmed by reader")
    assert values[3][14:] == (None, None, None, None)


@pytest.mark.usefixtures("november_invoices")
def test_the_export_command_writes_the_file_says_how_many_rows_and_logs_it(
    runner: FlaskCliRunner, session: Session, tmp_path: Path
) -> None:
    out = tmp_path / "november.csv"

    result = runner.invoke(
        args=[
            "billing",
            "export",
            "invoices",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-30",
            "--format",
            "csv",
            "--out",
            str(out),
            "--owner",
            "group",
        ]
    )

    assert result.exit_code == 0, result.output
    assert "Exported 1 rows of invoices (2026-11-01 to 2026-11-30)" in result.output
    assert len(_csv_rows(out.read_bytes())) == 1 + 1 + 1 + 1
    entry = session.scalars(select(AuditLog)).one()
    assert (entry.actor_label, entry.details["rows"]) == ("cli", 1)
    assert entry.details["filters"]["owner"] == "group"


def test_the_export_command_runs_without_loading_stripe_cryptography_or_zxcvbn_in_100_mb(
    database_url: str, session: Session, tmp_path: Path
) -> None:
    factories.InvoiceFactory()
    session.commit()
    out = tmp_path / "november.csv"
    code = (
        "import atexit, sys\n"
        "from flask.cli import main\n"
        "def loaded():\n"
        "    found = [m for m in ('stripe', 'cryptography', 'zxcvbn') if m in sys.modules]\n"
        "    status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "    peak = int(status.split()[0]) // 1024\n"
        "    print('LOADED', ','.join(found), 'PEAK', peak)\n"
        "atexit.register(loaded)\n"
        "sys.argv = ['flask', '--app', 'app', 'billing', 'export', 'invoices', '--from',\n"
        f"    '2026-11-01', '--to', '2026-11-30', '--out', {str(out)!r}]\n"
        "main()\n"
    )
    # The peak is VmHWM, this process image's own: ru_maxrss survives exec, so a child of
    # pytest would report pytest's peak.
    env = {**os.environ, "DATABASE_URL": database_url, "SECRET_KEYS": TEST_SECRET}

    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert "Exported 1 rows" in done.stdout
    [line] = [found for found in done.stdout.splitlines() if found.startswith("LOADED")]
    _, modules, _, peak = line.split(" ")
    assert modules == "", "only a call to Stripe or to a token key loads these"
    assert int(peak) <= 100, f"peak {peak} MB"


def test_the_export_command_names_a_bad_option(runner: FlaskCliRunner, tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    bad_date = runner.invoke(
        args=["billing", "export", "invoices", "--from", "2026-13-01", "--out", str(out)]
    )
    no_report = runner.invoke(args=["billing", "export", "ledger", "--out", str(out)])

    assert bad_date.exit_code == 2 and "--from" in bad_date.output
    assert no_report.exit_code == 2 and "REPORT" in no_report.output
    assert not out.exists()


def test_a_100000_invoice_export_streams_in_bounded_memory(
    session: Session, clock: FixedClock
) -> None:
    subscription = factories.SubscriptionFactory()
    start = factories.NOW.replace(day=1)
    session.execute(
        insert(Invoice),
        [
            {
                "stripe_id": f"in_bulk{n}",
                "number": f"TG-{n:07d}",
                "customer_id": subscription.customer_id,
                "subscription_id": subscription.id,
                "status": InvoiceStatus.PAID,
                "currency": "eur",
                "subtotal": 1200,
                "tax": 208,
                "total": 1200,
                "amount_paid": 1200,
                "customer_country": "BE",
                "created_at": start + timedelta(seconds=n),
            }
            for n in range(100_000)
        ],
    )
    session.commit()
    report = reports.get("invoices")
    progress = export.Progress()

    tracemalloc.start()
    size = 0
    for chunk in export.csv_chunks(session, report, NOVEMBER, clock.now(), progress):
        size += len(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert progress.rows == 100_000
    assert size > 100_000 * 50
    assert peak < 16 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_the_xlsx_writes_times_as_times_shares_and_days_as_numbers_and_totals_in_bold(
    session: Session, clock: FixedClock, tmp_path: Path
) -> None:
    day = factories.NOW.replace(day=3, hour=9, minute=30, second=15)
    factories.InvoiceFactory(created_at=day)
    trial = factories.TrialFactory(started_at=day, status=TrialStatus.CONVERTED)
    trial.converted_at = day + timedelta(days=2, hours=12)
    session.commit()
    invoices_path, trials_path = tmp_path / "invoices.xlsx", tmp_path / "trials.xlsx"

    export.write_xlsx(
        session,
        reports.get("invoices"),
        NOVEMBER,
        clock.now(),
        str(invoices_path),
        export.Progress(),
    )
    export.write_xlsx(
        session, reports.get("trials"), NOVEMBER, clock.now(), str(trials_path), export.Progress()
    )

    invoices_book = openpyxl.load_workbook(invoices_path)
    sheet = invoices_book.active
    assert sheet["B2"].value == datetime(2026, 11, 3, 9, 30, 15)
    assert sheet["B2"].number_format == "yyyy-mm-dd hh:mm:ss"
    assert (sheet["H2"].value, sheet["H2"].number_format) == (9.92, "#,##0.00")
    assert sheet["A4"].value == "Total: 1 paid" and sheet["A4"].font.bold
    assert not sheet["A2"].font.bold
    trials_book = openpyxl.load_workbook(trials_path)
    cohort = [cell.value for cell in trials_book.active[2]]
    assert cohort == ["2026-11", 1, 1, 0, 0, 1.0, 2.5, 2.5]
    assert trials_book.active["F2"].number_format == "0.00%"


@pytest.mark.postgres_only
def test_on_postgresql_the_copy_writes_every_value_as_the_python_formatter_does(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    """The COPY's SQL formatting against :func:`export.format_value` on the same rows, with
    values at the edges (a credit, a cent, millions, a time with microseconds, every formula
    start, a missing number), on connections whose DateStyle and time zone are not ISO and UTC:
    the export pins what it relies on."""
    if billing_db.engine().dialect.name != "postgresql":
        pytest.fail("run with TEST_DATABASE_URL pointing at PostgreSQL (make test does)")
    day = factories.NOW.replace(day=3)
    factories.InvoiceFactory(created_at=day.replace(microsecond=999_999), total=5, tax=1)
    factories.InvoiceFactory(created_at=day, total=-10_800, tax=-1_874, amount_paid=0)
    factories.InvoiceFactory(created_at=day, total=123_456_789, tax=0, number=None)
    for n, start in enumerate(export.FORMULA_STARTS):
        group = factories.GroupFactory(name=f"{start}SUM(A1)")
        customer = factories.CustomerFactory(
            reader=None,
            group_id=group.id,
            email=group.billing_email,
            email_canonical=group.billing_email,
        )
        seats = factories.SubscriptionFactory(customer=customer, reader=None, group_id=group.id)
        factories.InvoiceFactory(
            subscription=seats,
            created_at=day + timedelta(hours=n),
            number=f"{start}{n}",
            customer_vat_id=f"{start}BE0123",
        )
    session.commit()
    report = reports.get("invoices")
    assert report.statement is not None
    expected = [
        [export.format_value(v, c.kind) for v, c in zip(row, report.columns, strict=True)]
        for row in session.execute(report.statement(NOVEMBER))
    ]
    session.rollback()

    def foreign_settings(connection: Any, _record: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SET DateStyle = 'SQL, DMY'")
            cursor.execute("SET TimeZone = 'Pacific/Chatham'")
        connection.commit()

    engine = billing_db.engine()
    engine.dispose()
    event.listen(engine, "connect", foreign_settings)
    try:
        data = b"".join(
            export.csv_chunks(session, report, NOVEMBER, clock.now(), export.Progress())
        )
    finally:
        event.remove(engine, "connect", foreign_settings)
        engine.dispose()

    rows = _csv_rows(data)
    written = rows[1 : rows.index([])]
    assert len(written) == len(expected) == 3 + len(export.FORMULA_STARTS)
    assert written == expected
    by_gross = {row[9]: row for row in written}
    assert by_gross["0.05"][1] == "2026-11-03 09:00:00", "seconds cut, not rounded"
    assert by_gross["-108.00"][7:9] == ["-89.26", "-18.74"]
    assert by_gross["1234567.89"][0].startswith("in_test"), "no number: the Stripe id"
    guarded = [row for row in written if row[9] == "12.00"]
    assert len(guarded) == len(export.FORMULA_STARTS)
    assert all(row[0][0] == row[2][0] == row[5][0] == "'" for row in guarded)


@pytest.mark.postgres_only
def test_on_postgresql_the_rows_and_the_totals_of_an_export_see_the_same_invoices(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    """An invoice committed while the export streams is in neither its rows nor its totals
    (they are read in one snapshot, on two connections at once)."""
    if billing_db.engine().dialect.name != "postgresql":
        pytest.fail("run with TEST_DATABASE_URL pointing at PostgreSQL (make test does)")
    for n in range(3):
        factories.InvoiceFactory(created_at=factories.NOW.replace(day=3 + n))
    session.commit()
    report = reports.get("invoices")
    chunks = export.csv_chunks(session, report, NOVEMBER, clock.now(), export.Progress())

    header = next(chunks)
    with billing_db.new_session() as other:
        subscription = other.scalars(select(Invoice.subscription_id)).first()
        customer = other.scalars(select(Invoice.customer_id)).first()
        other.execute(
            insert(Invoice).values(
                stripe_id="in_during_export",
                number="TG-LATE",
                customer_id=customer,
                subscription_id=subscription,
                status=InvoiceStatus.PAID,
                currency="eur",
                subtotal=1200,
                tax=208,
                total=1200,
                amount_paid=1200,
                created_at=factories.NOW.replace(day=10),
            )
        )
        other.commit()
    rows = _csv_rows(header + b"".join(chunks))

    body = rows[1 : rows.index([])]
    assert [r[0] for r in body if r[0] == "TG-LATE"] == []
    assert len(body) == 3
    assert rows[-1][0] == "Total: 3 paid" and rows[-1][9] == "36.00"
    again = _csv_rows(
        b"".join(export.csv_chunks(session, report, NOVEMBER, clock.now(), export.Progress()))
    )
    assert again[-1][0] == "Total: 4 paid", "the next export sees it"
