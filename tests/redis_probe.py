"""Say in one line whether the test Redis answers (exit 0) or not (exit 1).

``make test`` uses it to decide whether to run the tests marked ``needs_redis``.
"""

from __future__ import annotations

import os
import sys

import redis

DEFAULT_URL = "redis://127.0.0.1:6379/15"


def main() -> int:
    """Ping ``TEST_REDIS_URL`` (or the default) and report."""
    url = os.environ.get("TEST_REDIS_URL") or DEFAULT_URL
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        print(f"Redis not reachable at {url} ({exc}): skipping the tests that need it.")
        return 1
    print(f"Redis reachable at {url}: running the tests that need it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
