"""Run every benchmark and write their figures to ``bench/RESULTS.md`` (what ``make bench`` does).

Each benchmark measures Tollgate against a baseline in the same run, on the same machine, and
prints markdown; this script adds the machine and the date, and keeps the previous file's prose
out of the way by rewriting it whole.

    .venv/bin/python bench/run.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def machine() -> str:
    """One line about the machine the figures come from."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB"
    return f"{os.cpu_count()} cores ({model}){memory}, Linux {platform.release()}, Python {platform.python_version()}"


def run(command: list[str]) -> str:
    """Run a benchmark, echoing its output, and return the markdown it printed."""
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    print(result.stdout, flush=True)
    return result.stdout


def main() -> None:
    """Run the benchmarks and rewrite RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, to try the scripts")
    args = parser.parse_args()
    python = sys.executable
    api_args = ["--duration", "3", "--readers", "5000"] if args.quick else []
    token_args = ["--iterations", "20000"] if args.quick else []
    api = run([python, "bench/entitlement_api.py", *api_args])
    tokens = run([python, "bench/bench_tokens.py", *token_args])
    group_ip = run([python, "bench/bench_group_ip.py", *token_args])
    export_args = ["--rows", "50000"] if args.quick else []
    exports = run([python, "bench/bench_exports.py", *export_args])
    intake = run([python, "bench/webhook_intake.py", *(["--duration", "3"] if args.quick else [])])
    worker = run(
        [python, "bench/worker_throughput.py", *(["--events", "600"] if args.quick else [])]
    )

    def table(out: str) -> str:
        """The markdown table a benchmark printed, then its line saying how it was run."""
        rows = [line for line in out.splitlines() if line.startswith("|")]
        how = [line for line in out.splitlines() if "`" in line and not line.startswith("|")]
        return "\n".join(rows) + "\n\n" + "\n".join(how)

    (HERE / "RESULTS.md").write_text(
        f"""# Benchmark results

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()} by `make bench`
(`.venv/bin/python bench/run.py`){" with --quick" if args.quick else ""}. Every figure is compared
with a baseline measured in the same run on the same machine. Targets: entitlement API >= 0.7 of a
bare Flask JSON endpoint served the same way; token verification >= 0.9 of raw itsdangerous; the
IP check with 10,000 office ranges >= 0.9 of the warm reader check; CSV export <= 1.5x
PostgreSQL's own COPY at <= 100 MB, XLSX <= 200 MB;
webhook intake >= 0.5 of a bare Flask POST endpoint; two workers keep up with 300 events/s.

## 1. The entitlement API

{table(api)}

## 2. Access-token verification

{table(tokens)}

## 3. Anonymous visitors by office network

{table(group_ip)}

## 4. Exports of a million invoices

{table(exports)}

## 5. Webhook intake

{table(intake)}

## 6. The worker

{table(worker)}

## Reading the figures

{NOTES}
"""
    )
    print(f"wrote {HERE / 'RESULTS.md'}")


NOTES = (HERE / "NOTES.md").read_text().strip() if (HERE / "NOTES.md").exists() else ""

if __name__ == "__main__":
    main()
