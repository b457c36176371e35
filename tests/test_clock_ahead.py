"""The clock-ahead pass's own rules (tests/clock_ahead.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.clock_ahead import moved


def test_moving_ahead_keeps_the_day_and_the_time() -> None:
    assert moved(datetime(2026, 12, 2, 15, 4, tzinfo=UTC), 8) == datetime(
        2034, 12, 2, 15, 4, tzinfo=UTC
    )


def test_the_29th_of_february_moves_to_the_28th_in_a_common_year() -> None:
    assert moved(datetime(2028, 2, 29, tzinfo=UTC), 1) == datetime(2029, 2, 28, tzinfo=UTC)
