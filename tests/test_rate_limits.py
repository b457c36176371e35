"""Rate limits keep their counters in Redis when ``REDIS_URL`` is set, as in production."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import post_form
from tests.redis_probe import DEFAULT_URL

pytestmark = pytest.mark.needs_redis


@pytest.fixture
def redis_url() -> str:
    return os.environ.get("TEST_REDIS_URL") or DEFAULT_URL


@pytest.fixture
def prefix(app_config: dict[str, Any], redis_url: str) -> Iterator[str]:
    """Limits stored in the test Redis under a prefix of this test alone (removed afterwards)."""
    key_prefix = f"tollgate-test-{uuid.uuid4().hex}"
    app_config["REDIS_URL"] = redis_url
    app_config["RATELIMIT_KEY_PREFIX"] = key_prefix
    app_config["RATELIMIT_LOGIN"] = "2 per minute"
    yield key_prefix
    server = redis.Redis.from_url(redis_url)
    for key in server.scan_iter(f"*{key_prefix}*"):
        server.delete(key)
    server.close()


def test_login_attempts_are_counted_in_redis_and_limited(
    prefix: str, client: FlaskClient, redis_url: str
) -> None:
    attempt = {"email": "someone@example.org", "password": "not the password"}
    statuses = [post_form(client, "/login", attempt).status_code for _ in range(3)]

    assert statuses == [400, 400, 429]
    server = redis.Redis.from_url(redis_url)
    assert list(server.scan_iter(f"*{prefix}*")), "no counter was written to Redis"
    server.close()
