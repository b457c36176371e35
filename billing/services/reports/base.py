"""What every report shares: its filters, its columns, and the table it builds.

A report is a module of :mod:`billing.services.reports` with a :class:`Report` in ``REPORT``. It
builds a :class:`Table` (rows of raw values: money in integer minor units with the row's currency,
times in UTC) for its page and small exports; a report whose rows come straight from one query
also gives that query (``statement``), so an export of any size streams from the database (see
:mod:`billing.services.reports.export`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

from billing.errors import ValidationFailed

_E = TypeVar("_E", bound=StrEnum)

AnySelect = Select[*tuple[Any, ...]]
"""A SELECT of any columns."""

MAX_RANGE_DAYS = 3660
"""The longest range a report covers (ten years): a typo in a year stays a clear error."""


class Kind(StrEnum):
    """How a column's values are written on pages and in exports."""

    TEXT = "text"
    CODE = "code"
    """Text Tollgate itself writes from a closed set (country and currency codes, statuses,
    kinds): exported as it is, without the formula guard user text gets."""
    INT = "int"
    MONEY = "money"
    """Integer minor units; shown and exported in major units with the row's currency."""
    DATE = "date"
    DATETIME = "datetime"
    PERCENT = "percent"
    """A :class:`~decimal.Decimal` share (0.25 is 25 %), or None when there is nothing to divide."""
    DECIMAL = "decimal"


class Owner(StrEnum):
    """Whom a subscription or invoice belongs to."""

    INDIVIDUAL = "individual"
    GROUP = "group"


class Granularity(StrEnum):
    """How a report groups time."""

    WEEK = "week"
    MONTH = "month"
    QUARTER = "quarter"


@dataclass(frozen=True)
class Column:
    """One column of a report: its key in the rows, its header and how it is written."""

    key: str
    label: str
    kind: Kind = Kind.TEXT
    currency: str | None = None
    """For money always in one currency (the VAT return's euros); None: the row's currency."""


@dataclass(frozen=True)
class Filters:
    """What a report is asked for: a range of days (both included) and optional narrowing."""

    start: date
    end: date
    currency: str | None = None
    plan: str | None = None
    country: str | None = None
    owner: Owner | None = None
    granularity: Granularity | None = None

    @property
    def start_at(self) -> datetime:
        """The first moment of the range (UTC midnight of ``start``)."""
        return datetime.combine(self.start, time(), tzinfo=UTC)

    @property
    def end_before(self) -> datetime:
        """The first moment after the range (UTC midnight after ``end``)."""
        return datetime.combine(self.end + timedelta(days=1), time(), tzinfo=UTC)

    def describe(self) -> dict[str, str]:
        """The filters as text, for the audit log and file names (empty ones left out)."""
        return {k: str(v) for k, v in asdict(self).items() if v is not None}

    def slug(self) -> str:
        """The range as it appears in a file name: ``2026-10-01_2026-12-31``."""
        return f"{self.start.isoformat()}_{self.end.isoformat()}"


@dataclass
class Table:
    """A built report: columns, rows (tuples in column order), totals rows, and notes for people."""

    columns: Sequence[Column]
    rows: Sequence[tuple[Any, ...]]
    totals: Sequence[tuple[Any, ...]] = ()
    notes: Sequence[str] = ()
    sections: Mapping[str, Table] = field(default_factory=dict)
    """Further tables of the same report (the VAT return's corrections, say)."""

    def currency_of(self, row: Sequence[Any]) -> str | None:
        """The currency of a row (its ``currency`` column), None when it has none."""
        keys = [c.key for c in self.columns]
        return str(row[keys.index("currency")]) if "currency" in keys else None


@dataclass(frozen=True)
class Report:
    """A report: its name in URLs and the CLI, its title, and how to build it."""

    name: str
    title: str
    description: str
    columns: Sequence[Column]
    filters: frozenset[str]
    """Which of :class:`Filters`' optional fields this report honours."""
    build: Callable[[Session, Filters, datetime, int | None], Table]
    """Build the table as of a moment; a streamable report keeps only the first rows (the limit)."""
    statement: Callable[[Filters], AnySelect] | None = None
    """The one query whose rows are the report's rows (exports stream it); None: use ``build``."""
    default_granularity: Granularity | None = None


def major(amount: int | None) -> Decimal | None:
    """Minor units as an exact amount in major units: ``major(1234)`` is ``Decimal("12.34")``."""
    if amount is None:
        return None
    return Decimal(amount).scaleb(-2)


def share(part: int, whole: int) -> Decimal | None:
    """``part / whole`` as an exact decimal rounded to 0.01 %; None when ``whole`` is 0."""
    if whole == 0:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(Decimal("0.0001"))


def month_start(day: date) -> date:
    """The first day of ``day``'s month."""
    return day.replace(day=1)


def next_month(day: date) -> date:
    """The first day of the month after ``day``'s."""
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def months(start: date, end: date) -> list[date]:
    """First days of every month that overlaps ``start``..``end`` (both included)."""
    found, current = [], month_start(start)
    while current <= end:
        found.append(current)
        current = next_month(current)
    return found


def period_of(moment: date, granularity: Granularity) -> str:
    """The label of the period ``moment`` falls in: ``2026-W48``, ``2026-11``, ``Q4.2026``."""
    if granularity == Granularity.WEEK:
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    if granularity == Granularity.MONTH:
        return f"{moment.year}-{moment.month:02d}"
    return f"Q{(moment.month - 1) // 3 + 1}.{moment.year}"


def period_end(label: str) -> date:
    """The last day of the period a :func:`period_of` label names (weeks end on Sunday)."""
    if label.startswith("Q"):
        quarter, year = label[1:].split(".")
        first = date(int(year), 3 * (int(quarter) - 1) + 1, 1)
        return next_month(next_month(next_month(first))) - timedelta(days=1)
    if "-W" in label:
        year, week = label.split("-W")
        return date.fromisocalendar(int(year), int(week), 7)
    year, month = label.split("-")
    return next_month(date(int(year), int(month), 1)) - timedelta(days=1)


# --- filters from a form or the command line ----------------------------------------------------

FILTER_FIELDS = ("from", "to", "currency", "plan", "country", "owner", "period")


def parse_filters(values: Mapping[str, str | None], *, today: date, report: Report) -> Filters:
    """Filters from text (query string or CLI options); a bad value raises naming its field.

    The range defaults to the last whole month (the last whole quarter for a report grouped by
    quarter), the month or quarter finance closes.
    """
    granularity = _choice(values, "period", Granularity) or report.default_granularity
    default_start, default_end = _last_whole(today, granularity)
    start = _day(values, "from") or default_start
    end = _day(values, "to") or default_end
    if end < start:
        raise ValidationFailed("The range ends before it starts.", field="to")
    if (end - start).days > MAX_RANGE_DAYS:
        raise ValidationFailed("A report covers ten years at most.", field="from")
    currency = _code(values, "currency", 3)
    country = _code(values, "country", 2)
    plan = (values.get("plan") or "").strip() or None
    if plan is not None and (len(plan) > 64 or not plan.replace("-", "").isalnum()):
        raise ValidationFailed("A plan code is letters, digits and dashes.", field="plan")
    return Filters(
        start=start,
        end=end,
        currency=currency.lower() if currency else None,
        plan=plan if "plan" in report.filters else None,
        country=country.upper() if country and "country" in report.filters else None,
        owner=_choice(values, "owner", Owner) if "owner" in report.filters else None,
        granularity=granularity,
    )


def _last_whole(today: date, granularity: Granularity | None) -> tuple[date, date]:
    this_month = month_start(today)
    if granularity == Granularity.QUARTER:
        this_quarter = this_month.replace(month=3 * ((this_month.month - 1) // 3) + 1)
        previous = (this_quarter - timedelta(days=1)).replace(day=1)
        start = previous.replace(month=3 * ((previous.month - 1) // 3) + 1)
        return start, this_quarter - timedelta(days=1)
    last = this_month - timedelta(days=1)
    return month_start(last), last


def _day(values: Mapping[str, str | None], name: str) -> date | None:
    text = (values.get(name) or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text[:10]) if len(text) == 10 else _bad_day(name)
    except ValueError:
        return _bad_day(name)


def _bad_day(name: str) -> date:
    raise ValidationFailed("Give a date as YYYY-MM-DD.", field=name)


def _code(values: Mapping[str, str | None], name: str, length: int) -> str | None:
    text = (values.get(name) or "").strip()
    if not text:
        return None
    if len(text) != length or not text.isascii() or not text.isalpha():
        raise ValidationFailed(f"Give a {length}-letter code.", field=name)
    return text


def _choice(values: Mapping[str, str | None], name: str, enum: type[_E]) -> _E | None:
    text = (values.get(name) or "").strip()
    if not text:
        return None
    try:
        return enum(text)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise ValidationFailed(f"Choose one of {allowed}.", field=name) from None
