"""Exports of 1,000,000 invoices from PostgreSQL: our streamed CSV against PostgreSQL's own
``COPY (SELECT ...) TO STDOUT WITH CSV`` of the same query in the same run, and our XLSX.

Builds a throwaway database on ``BENCH_DATABASE_URL``'s server (default the local PostgreSQL),
fills it with invoices through ``COPY FROM``, then measures each export in its own process, so
each peak memory (``ru_maxrss``: the interpreter and its imports included) is that export's
alone, and the ``billing export`` command itself as operators run it (the whole process: the
app, its imports and the export). Prints a markdown table.

    .venv/bin/python bench/bench_exports.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
START = datetime(2026, 1, 1, tzinfo=UTC)
RANGE = (date(2026, 1, 1), date(2026, 12, 31))
REPEATS = 3
"""COPY and our CSV each run this many times in their process; the fastest run counts (the
first pays for cold caches, and a busy machine slows single runs by a third)."""


def _app(url: str):  # type: ignore[no-untyped-def]
    from billing import create_app

    return create_app({"DATABASE_URL": url, "SECRET_KEYS": ["bench-" * 8], "TESTING": True})


def fill(url: str, rows: int) -> None:
    """Migrate the database and write ``rows`` invoices of one subscription through COPY."""
    import psycopg
    from psycopg.types.json import Jsonb

    from billing import db

    db.upgrade(url)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO plans (code, name, kind, interval, amount, currency, active) "
            "VALUES ('individual-monthly', 'Monthly', 'individual', 'month', 1200, 'eur', true) "
            "RETURNING id"
        )
        plan_id = cur.fetchone()[0]  # type: ignore[index]
        cur.execute(
            "INSERT INTO readers (public_id, email, email_canonical, name, country, password_hash, "
            "session_token, staff_role, created_at) VALUES ('rdr_bench', 'bench@example.org', "
            "'bench@example.org', 'Bench Reader', 'BE', 'x', 'tok', 'none', now()) RETURNING id"
        )
        reader_id = cur.fetchone()[0]  # type: ignore[index]
        cur.execute(
            "INSERT INTO customers (stripe_id, reader_id, email, email_canonical, country, "
            "created_at) VALUES ('cus_bench', %s, 'bench@example.org', 'bench@example.org', 'BE', "
            "now()) RETURNING id",
            (reader_id,),
        )
        customer_id = cur.fetchone()[0]  # type: ignore[index]
        cur.execute(
            "INSERT INTO subscriptions (public_id, stripe_id, customer_id, reader_id, plan_id, "
            "status, quantity, current_period_start, current_period_end, cancel_at_period_end, "
            "collection_method, created_at, updated_at) VALUES ('sub_bench', 'sub_bench', %s, %s, "
            "%s, 'active', 1, now(), now(), false, 'charge_automatically', now(), now()) "
            "RETURNING id",
            (customer_id, reader_id, plan_id),
        )
        subscription_id = cur.fetchone()[0]  # type: ignore[index]
        columns = (
            "stripe_id, number, customer_id, subscription_id, status, currency, subtotal, tax, "
            "total, amount_paid, amount_refunded, customer_country, created_at, tax_rate, "
            "tax_country, tax_kind, tax_evidence"
        )
        # the VAT columns as every invoice since VAT landed has them (evidence included)
        evidence = Jsonb(
            {"declared_country": "BE", "card_country": "BE", "confirmed_by_reader": False}
        )
        seconds = int((RANGE[1] - RANGE[0]).total_seconds() // 86400 * 86400)
        with cur.copy(f"COPY invoices ({columns}) FROM STDIN") as copy:
            for n in range(rows):
                copy.write_row(
                    (
                        f"in_bench{n}",
                        f"TG-{n:07d}",
                        customer_id,
                        subscription_id,
                        "paid",
                        "eur",
                        1200,
                        208,
                        1200,
                        1200,
                        0,
                        "BE",
                        START + timedelta(seconds=n * seconds // max(rows, 1)),
                        21,
                        "BE",
                        "standard",
                        evidence,
                    )
                )
        conn.commit()
        cur.execute("ANALYZE")


def measure_cli(url: str) -> dict[str, float]:
    """Run ``flask --app app billing export invoices`` as a process of its own and report its
    time, size and peak memory (its ``ru_maxrss``, from ``wait4``: the whole command)."""
    out = Path(tempfile.mkstemp(suffix=".csv")[1])
    flask = Path(sys.executable).with_name("flask")
    command = [str(flask), "--app", "app", "billing", "export", "invoices"]
    command += ["--from", RANGE[0].isoformat(), "--to", RANGE[1].isoformat(), "--out", str(out)]
    env = {**os.environ, "DATABASE_URL": url, "SECRET_KEYS": "bench-" * 8}
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"billing export failed with {process.returncode}")
    size = out.stat().st_size
    out.unlink()
    return {"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024, "bytes": size}


def measure(url: str, mode: str) -> dict[str, float]:
    """Run one export (``copy``, ``csv`` or ``xlsx``) and report its time, size and peak memory."""
    from sqlalchemy import select

    from billing import db
    from billing.services import reports
    from billing.services.reports import export
    from billing.services.reports.base import Filters

    app = _app(url)
    report = reports.get("invoices")
    filters = Filters(start=RANGE[0], end=RANGE[1])
    out = Path(tempfile.mkstemp(suffix=f".{mode}")[1])
    with app.app_context():
        session = db.session()
        now = datetime.now(UTC)
        session.execute(select(1))
        ready_mb = _rss_mb()
        times = []
        for _ in range(1 if mode == "xlsx" else REPEATS):
            progress = export.Progress()
            began = time.perf_counter()
            if mode == "copy":
                assert report.statement is not None
                compiled = report.statement(filters).compile(
                    dialect=session.get_bind().dialect,
                    compile_kwargs={"render_postcompile": True},
                )
                raw = session.connection().connection.driver_connection
                with raw.cursor() as cur, open(out, "wb") as target:  # type: ignore[union-attr]
                    with cur.copy(f"COPY ({compiled}) TO STDOUT WITH CSV", compiled.params) as copy:
                        for data in copy:
                            target.write(data)
            elif mode == "csv":
                with open(out, "wb") as target:
                    for chunk in export.csv_chunks(session, report, filters, now, progress):
                        target.write(chunk)
            else:
                export.write_xlsx(session, report, filters, now, str(out), progress)
            times.append(time.perf_counter() - began)
            session.rollback()
        seconds = min(times)
    size = out.stat().st_size
    out.unlink()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seconds": seconds,
        "peak_mb": peak_mb,
        "growth_mb": peak_mb - ready_mb,
        "bytes": size,
        "rows": progress.rows,
    }


def _rss_mb() -> float:
    """The process's resident memory now, in MB (from /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    """Build the database, run each export in its own process, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--measure", choices=["copy", "csv", "xlsx", "cli"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        found = measure_cli(args.url) if args.measure == "cli" else measure(args.url, args.measure)
        print(json.dumps(found))
        return
    import psycopg

    name = f"tollgate_bench_exports_{uuid.uuid4().hex[:8]}"
    base = ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        began = time.perf_counter()
        fill(url, args.rows)
        print(
            f"filled {args.rows:,} invoices in {time.perf_counter() - began:.1f} s", file=sys.stderr
        )
        results = {}
        for mode in ("copy", "csv", "xlsx", "cli"):
            done = subprocess.run(
                [sys.executable, __file__, "--measure", mode, "--url", url],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(mode, results[mode], file=sys.stderr)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    copy, ours, xlsx, cli = results["copy"], results["csv"], results["xlsx"], results["cli"]
    ratio = ours["seconds"] / copy["seconds"]
    print(
        f"| export of {args.rows:,} invoices (PostgreSQL) | seconds | peak MB (process) | of which the export | MB written | ratio to COPY |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| `COPY (SELECT ...) TO STDOUT WITH CSV`, same query, unformatted (baseline) | {copy['seconds']:.2f} | {copy['peak_mb']:.0f} | {copy['growth_mb']:.0f} | {copy['bytes'] / 1e6:.0f} | 1.00 |"
    )
    print(
        f"| our CSV: COPY with formatting in SQL, 64 KiB chunks (target <= 1.5x, <= 100 MB) | {ours['seconds']:.2f} | {ours['peak_mb']:.0f} | {ours['growth_mb']:.0f} | {ours['bytes'] / 1e6:.0f} | {ratio:.2f} |"
    )
    print(
        f"| our XLSX: XlsxWriter constant_memory (target <= 200 MB) | {xlsx['seconds']:.2f} | {xlsx['peak_mb']:.0f} | {xlsx['growth_mb']:.0f} | {xlsx['bytes'] / 1e6:.0f} | {xlsx['seconds'] / copy['seconds']:.1f} |"
    )
    print(
        f"| `flask --app app billing export invoices` (CSV), the whole command (target <= 100 MB) | {cli['seconds']:.2f} | {cli['peak_mb']:.0f} |  | {cli['bytes'] / 1e6:.0f} | {cli['seconds'] / copy['seconds']:.2f} |"
    )
    print()
    print(
        f"Each export in its own process (peak is `ru_maxrss`, the interpreter and the app included); PostgreSQL on the same machine; `.venv/bin/python bench/bench_exports.py --rows {args.rows}`"
    )


if __name__ == "__main__":
    main()
