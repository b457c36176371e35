"""The clock-ahead pass: run the suite with the whole process's clock years in the future.

A pytest plugin (loaded by ``tests/conftest.py``). ``pytest --clock-ahead=YEARS`` moves every clock
this process reads (``time.time()``, ``datetime.now()``, what itsdangerous, Werkzeug and
Flask-Limiter use) ``YEARS`` years past the real now, ticking on from there, before any test is
collected. A test that mixes the wall clock with a fixed date (the kind that passed the day it was
written and failed a week later) fails in this pass on the day it is written.

Tests that start another process that reads the real clock (localstripe, Chromium, a child
Python) cannot be moved with it and are deselected here (they still run in the normal passes):
tests asking for one of :data:`REAL_CLOCK_FIXTURES`, and tests marked ``real_clock``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine

REAL_CLOCK_FIXTURES = frozenset({"localstripe_server", "browser"})
_TRAVELLER = pytest.StashKey[time_machine.travel]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--clock-ahead=YEARS``."""
    parser.addoption(
        "--clock-ahead",
        type=int,
        default=0,
        metavar="YEARS",
        help="run with this process's clock moved YEARS years ahead of the real now",
    )


def moved(now: datetime, years: int) -> datetime:
    """``now`` moved ``years`` calendar years ahead (29 February becomes 28 February)."""
    try:
        return now.replace(year=now.year + years)
    except ValueError:
        return now.replace(year=now.year + years, day=28)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker; with ``--clock-ahead``, move the clock before collection starts."""
    config.addinivalue_line(
        "markers", "real_clock: starts a process that reads the real clock (not moved ahead)"
    )
    years = config.getoption("--clock-ahead")
    if years < 0:
        raise pytest.UsageError("--clock-ahead takes a number of years >= 0")
    if years:
        traveller = time_machine.travel(moved(datetime.now(UTC), years), tick=True)
        traveller.start()
        config.stash[_TRAVELLER] = traveller


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put the clock back."""
    traveller = config.stash.get(_TRAVELLER, None)
    if traveller is not None:
        traveller.stop()


def uses_real_clock(item: pytest.Item) -> bool:
    """Whether ``item`` relies on a process whose clock cannot be moved with ours."""
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(fixtures & REAL_CLOCK_FIXTURES) or item.get_closest_marker("real_clock") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the clock-ahead pass, deselect the tests that depend on another process's clock."""
    if not config.getoption("--clock-ahead"):
        return
    kept = [item for item in items if not uses_real_clock(item)]
    deselected = [item for item in items if uses_real_clock(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say where the clock stands, so a failure in this pass is read as what it is."""
    years = config.getoption("--clock-ahead")
    if not years:
        return None
    return f"clock moved {years} years ahead: it reads {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
