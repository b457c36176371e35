"""Say in one line whether the test PostgreSQL server answers (exit 0) or not (exit 1).

``make test`` uses it to decide whether to run the PostgreSQL pass.
"""

from __future__ import annotations

import os
import sys

import psycopg

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def main() -> int:
    """Try to connect to ``TEST_DATABASE_URL`` (or the default) and report."""
    url = os.environ.get("TEST_DATABASE_URL") or DEFAULT_URL
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            version = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"PostgreSQL not reachable at {url} ({first_line}): running the SQLite pass only.")
        return 1
    print(
        f"PostgreSQL {version[0] if version else '?'} reachable at {url}: running the PostgreSQL pass."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
