"""The ECB's euro reference rates, from the reviewed file ``billing/data/ecb_rates.csv``.

The file is the ECB's own ``eurofxref-hist.csv`` (its source and how to update it are in
``billing/data/README.md``): a ``Date`` column, then one column per currency with the units of
that currency one euro buys.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path

DEFAULT_FILE = Path(__file__).resolve().parent.parent.parent / "data" / "ecb_rates.csv"
LOOK_AHEAD_DAYS = 10
"""How far after a period's last day to look for the next day the ECB published rates."""


@dataclass(frozen=True)
class Rate:
    """Units of ``currency`` one euro bought on ``day`` (the day the ECB published it)."""

    currency: str
    day: date
    per_euro: Decimal


class RatesFile:
    """The reference rates of one file, by day and currency."""

    def __init__(self, by_day: dict[date, dict[str, Decimal]]) -> None:
        self._by_day = by_day

    @classmethod
    def load(cls, path: Path | str) -> RatesFile:
        """Read an ECB ``eurofxref-hist.csv`` file (``N/A`` and empty cells are skipped)."""
        by_day: dict[date, dict[str, Decimal]] = {}
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                day = date.fromisoformat(row.pop("Date").strip())
                rates = {}
                for code, text in row.items():
                    if not code or not text or text.strip() == "N/A":
                        continue
                    try:
                        rates[code.strip().lower()] = Decimal(text.strip())
                    except InvalidOperation:
                        continue
                by_day[day] = rates
        return cls(by_day)

    def rate_for(self, currency: str, last_day: date) -> Rate | None:
        """The rate of ``last_day``, or of the next day the ECB published one (None if neither
        is in the file yet). The euro's own rate is 1."""
        code = currency.lower()
        if code == "eur":
            return Rate("eur", last_day, Decimal(1))
        for offset in range(LOOK_AHEAD_DAYS + 1):
            day = last_day + timedelta(days=offset)
            found = self._by_day.get(day, {}).get(code)
            if found is not None:
                return Rate(code, day, found)
        return None

    @property
    def newest(self) -> date | None:
        """The newest day in the file."""
        return max(self._by_day, default=None)


@lru_cache(maxsize=4)
def rates(path: str) -> RatesFile:
    """The rates file at ``path``, read once per process (replace the file and restart)."""
    return RatesFile.load(path)


def to_euro_cents(amount: int, rate: Rate) -> int:
    """An amount in minor units of ``rate.currency`` as euro cents, rounded half up."""
    if rate.currency == "eur":
        return amount
    exact = Decimal(amount) / rate.per_euro
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
