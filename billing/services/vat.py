"""VAT on digital newspaper subscriptions: the dated rate table, who is taxed how, and the evidence.

**What is charged where** (EU One-Stop-Shop rules for electronically supplied services):

- a consumer in the publisher's own country pays that country's rate (``domestic``);
- a consumer in another EU member state pays *their* country's rate (``oss``);
- a business with a valid VAT id of *another* member state pays no VAT: the invoice says
  "reverse charge" and the customer accounts for it (``reverse_charge``, Art. 196 of the VAT
  Directive); a business in the publisher's own country pays domestic VAT like a consumer;
- a customer outside the EU pays none (``outside_eu``), unless ``VAT_OUTSIDE_EU_RATE`` says
  otherwise for a publisher registered there.

The rates are those for electronically supplied newspapers, read from the reviewed data file
``billing/data/vat_enewspapers.toml`` (:func:`rate_table`). Consumer prices include VAT: the plan's
amount is what the reader pays, and the VAT inside it is ``amount * rate / (100 + rate)`` rounded
half up to the minor unit (:func:`inclusive_tax`), which is how Stripe computes inclusive Tax Rates.

:func:`tax_treatment` is the one decision, for readers and for organisations (the groups area calls
it with the group's country and VAT id). VAT ids are checked offline with python-stdnum (format and
check digits) and, when ``VIES_URL`` is set, against the Commission's VIES service with a timeout
(:func:`check_vies`); an unreachable VIES never blocks a sale, the result is only recorded.
"""

from __future__ import annotations

import itertools
import json
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, Final

from stdnum.eu import vat as eu_vat
from stdnum.exceptions import InvalidChecksum, InvalidComponent, InvalidLength
from stdnum.exceptions import ValidationError as StdnumValidationError

from billing.errors import ValidationFailed

RATE_TABLE_PATH: Final = Path(__file__).resolve().parent.parent / "data" / "vat_enewspapers.toml"

EU_MEMBER_STATES: Final = frozenset(
    "AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK".split()
)
"""ISO 3166-1 codes of the 27 member states (Greece is ``GR`` here, ``EL`` in VAT ids)."""

REVERSE_CHARGE_MENTION: Final = (
    "Reverse charge: VAT to be accounted for by the recipient (Article 196, Directive 2006/112/EC)."
)
"""The legal mention every reverse-charged invoice carries."""

_VAT_PREFIX_TO_ISO: Final = {"EL": "GR"}


class TaxKind(StrEnum):
    """How a sale is taxed."""

    DOMESTIC = "domestic"
    OSS = "oss"
    REVERSE_CHARGE = "reverse_charge"
    OUTSIDE_EU = "outside_eu"


class RateTableError(ValueError):
    """The rate table is unusable: a gap, an overlap, a missing member state, a bad value."""


class NoRateError(LookupError):
    """The table has no rate for that country on that date."""


class InvalidVatIdError(ValidationFailed):
    """A VAT id that is malformed, has wrong check digits, or belongs to another country."""

    code = "invalid_vat_id"


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateRow:
    """The e-newspaper rate of one country from ``starts_on`` until the country's next row."""

    country: str
    starts_on: date
    rate: Decimal
    standard: Decimal
    basis: str
    note: str | None = None


@dataclass(frozen=True, slots=True)
class RateTable:
    """Every member state's dated rates, checked whole when built (see :meth:`from_mapping`)."""

    rows: tuple[RateRow, ...]
    covers_from: date
    checked_on: date
    source: str

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RateTable:
        """Build and check a table from the parsed TOML; raise :class:`RateTableError` naming the
        row at fault.

        A row applies from its date until the next row of its country, so a country's rates leave
        no gap once its first row starts on ``covers_from``; a gap is a first row that starts later
        (the dates before it have no rate) and an overlap is two rows of a country on one date.
        """
        try:
            covers_from = _as_date(data["covers_from"], "covers_from")
            checked_on = _as_date(data["checked_on"], "checked_on")
            source = str(data["source"]).strip()
            raw_rows = data["rate"]
        except KeyError as exc:
            raise RateTableError(f"the table has no {exc.args[0]!r}") from exc
        if not source:
            raise RateTableError("the table names no source")
        if not isinstance(raw_rows, list):
            raise RateTableError("'rate' must be a list of rows")
        rows = tuple(_row(index, raw) for index, raw in enumerate(raw_rows))
        _check(rows, covers_from)
        ordered = tuple(sorted(rows, key=lambda row: (row.country, row.starts_on)))
        return cls(rows=ordered, covers_from=covers_from, checked_on=checked_on, source=source)

    def history(self, country: str) -> tuple[RateRow, ...]:
        """A country's rows, oldest first."""
        return tuple(row for row in self.rows if row.country == country.upper())

    def row_on(self, country: str, on: date) -> RateRow:
        """The row that applies to ``country`` on ``on``; :class:`NoRateError` if none does."""
        found = [row for row in self.history(country) if row.starts_on <= on]
        if not found:
            raise NoRateError(f"no VAT rate for {country.upper()} on {on.isoformat()}")
        return found[-1]

    def rate_on(self, country: str, on: date) -> Decimal:
        """The percentage that applies to ``country`` on ``on``."""
        return self.row_on(country, on).rate


def _as_date(value: Any, what: str) -> date:
    if isinstance(value, datetime):
        raise RateTableError(f"{what} must be a date, not a date and time")
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise RateTableError(f"{what} is not a date: {value!r}") from exc


def _percentage(value: Any, what: str) -> Decimal:
    if not isinstance(value, str):
        raise RateTableError(f'{what} must be decimal text like "5.5", got {value!r}')
    try:
        number = Decimal(value)
    except InvalidOperation as exc:
        raise RateTableError(f"{what} is not a number: {value!r}") from exc
    if not (number.is_finite() and Decimal(0) <= number <= Decimal(100)):
        raise RateTableError(f"{what} must be between 0 and 100, got {value!r}")
    if number.as_tuple().exponent < -4:  # type: ignore[operator]
        raise RateTableError(f"{what} has more than four decimals (Stripe's limit): {value!r}")
    return number


def _row(index: int, raw: Any) -> RateRow:
    where = f"row {index + 1}"
    if not isinstance(raw, Mapping):
        raise RateTableError(f"{where} is not a table")
    country = str(raw.get("country", "")).upper()
    if country not in EU_MEMBER_STATES:
        raise RateTableError(f"{where}: {country!r} is not an EU member state")
    where = f"{where} ({country})"
    basis = str(raw.get("basis", "")).strip()
    if not basis:
        raise RateTableError(f"{where} cites no basis")
    rate = _percentage(raw.get("rate"), f"{where} rate")
    standard = _percentage(raw.get("standard"), f"{where} standard")
    if rate > standard:
        raise RateTableError(f"{where}: rate {rate} is above the standard rate {standard}")
    note = raw.get("note")
    return RateRow(
        country=country,
        starts_on=_as_date(raw.get("from"), f"{where} from"),
        rate=rate,
        standard=standard,
        basis=basis,
        note=str(note) if note else None,
    )


def _check(rows: Sequence[RateRow], covers_from: date) -> None:
    for country in sorted(EU_MEMBER_STATES):
        dates = sorted(row.starts_on for row in rows if row.country == country)
        if not dates:
            raise RateTableError(f"{country} has no rate")
        if dates[0] < covers_from:
            raise RateTableError(
                f"{country}: a row starts {dates[0]}, before the table's covers_from {covers_from}"
            )
        if dates[0] > covers_from:
            raise RateTableError(
                f"{country}: gap from {covers_from} to {dates[0]} (its first row starts later)"
            )
        for earlier, later in itertools.pairwise(dates):
            if earlier == later:
                raise RateTableError(f"{country}: two rows start on {earlier} (overlap)")


def load_rate_table(path: Path = RATE_TABLE_PATH) -> RateTable:
    """Read and check the rate table at ``path``."""
    with path.open("rb") as f:
        return RateTable.from_mapping(tomllib.load(f))


@cache
def rate_table() -> RateTable:
    """The repository's rate table, read once per process."""
    return load_rate_table()


# --- money ---------------------------------------------------------------------------------------


def inclusive_tax(amount: int, rate: Decimal) -> int:
    """The VAT inside a gross ``amount`` (minor units) at ``rate`` percent: ``amount * rate /
    (100 + rate)``, rounded half up to the minor unit (half away from zero for negative amounts,
    such as refunds)."""
    if rate == 0 or amount == 0:
        return 0
    exact = Decimal(abs(amount)) * rate / (Decimal(100) + rate)
    tax = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return tax if amount > 0 else -tax


def exclusive_tax(amount: int, rate: Decimal) -> int:
    """The VAT on top of a net ``amount`` (minor units) at ``rate`` percent, rounded half up to
    the minor unit (half away from zero for negative amounts) as Stripe's exclusive Tax Rates
    do."""
    if rate == 0 or amount == 0:
        return 0
    exact = Decimal(abs(amount)) * rate / 100
    tax = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return tax if amount > 0 else -tax


def plain_rate(rate: Decimal) -> Decimal:
    """``rate`` without trailing zeros or exponent (``7.0000`` -> ``7``, ``20`` stays ``20``)."""
    normal = rate.normalize()
    return normal.quantize(Decimal(1)) if normal == normal.to_integral_value() else normal


# --- VAT ids -------------------------------------------------------------------------------------


def vat_id_country(vat_id: str) -> str:
    """The ISO country of a compact VAT id (``EL...`` is Greece, ``GR``)."""
    prefix = vat_id[:2].upper()
    return _VAT_PREFIX_TO_ISO.get(prefix, prefix)


def normalise_vat_id(value: str, *, country: str | None = None, field: str = "vat_id") -> str:
    """The compact form of an EU VAT id (``DE136695976``), checked for format and check digits
    with python-stdnum, and, when ``country`` is given, that it was issued by that country.

    Raises :class:`InvalidVatIdError` naming ``field``.
    """
    text = value.strip()
    if not text:
        raise InvalidVatIdError("Enter a VAT number.", field=field)
    try:
        compact: str = eu_vat.validate(text)
    except StdnumValidationError as exc:
        raise InvalidVatIdError(
            f"“{text}” is not a valid EU VAT number: {_vat_id_problem(exc)}", field=field
        ) from exc
    issuer = vat_id_country(compact)
    if issuer not in EU_MEMBER_STATES:
        raise InvalidVatIdError(f"“{text}” is not a VAT number of an EU member state.", field=field)
    if country is not None and issuer != country.upper():
        raise InvalidVatIdError(
            f"{compact} is a VAT number of {issuer}, not of {country.upper()}.", field=field
        )
    return compact


def _vat_id_problem(exc: StdnumValidationError) -> str:
    """What python-stdnum found wrong with a VAT id, as a sentence for the person who typed it."""
    if isinstance(exc, InvalidChecksum):
        return "its check digit is wrong (a typing mistake?)."
    if isinstance(exc, InvalidLength):
        return "it has too many or too few characters for its country."
    if isinstance(exc, InvalidComponent):
        return "it does not start with the two letters of an EU member state (DE, FR, ...)."
    return "it is not written as one is (the country's two letters, then the number)."


@dataclass(frozen=True, slots=True)
class ViesResult:
    """What VIES answered about a VAT id: ``valid`` is None when it could not be asked."""

    vat_id: str
    valid: bool | None
    checked_at: datetime
    name: str | None = None
    error: str | None = None


def check_vies(vat_id: str, *, url: str, timeout: float, now: datetime) -> ViesResult:
    """Ask the VIES REST service at ``url`` whether the compact ``vat_id`` is registered.

    ``url`` is the service's base (``https://ec.europa.eu/taxation_customs/vies/rest-api``); the
    call is ``GET {url}/ms/{member state}/vat/{number}``. Never raises for the service's
    failures: a timeout, an error status or an unreadable answer gives ``valid=None`` with the
    reason in ``error``.
    """
    state, number = vat_id[:2].upper(), vat_id[2:]
    address = f"{url.rstrip('/')}/ms/{urllib.parse.quote(state)}/vat/{urllib.parse.quote(number)}"
    if urllib.parse.urlsplit(address).scheme not in {"http", "https"}:
        return ViesResult(vat_id, None, now, error=f"VIES_URL is not http(s): {url!r}")
    request = urllib.request.Request(address, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            answer = json.loads(response.read(65536))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return ViesResult(vat_id, None, now, error=f"VIES did not answer: {exc}")
    if not isinstance(answer, Mapping) or not isinstance(answer.get("isValid"), bool):
        return ViesResult(vat_id, None, now, error="VIES gave no isValid in its answer")
    name = answer.get("name")
    return ViesResult(
        vat_id, answer["isValid"], now, name=name if isinstance(name, str) and name else None
    )


# --- the decision --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaxTreatment:
    """How one sale is taxed: ``rate`` percent of VAT included in the price (0 for reverse charge
    and outside the EU), in ``country``; ``mention`` is printed on the invoice when set."""

    kind: TaxKind
    country: str
    rate: Decimal
    vat_id: str | None = None
    mention: str | None = None
    vies: ViesResult | None = None

    @property
    def reverse_charge(self) -> bool:
        """Whether the customer accounts for the VAT (0 % on the invoice)."""
        return self.kind == TaxKind.REVERSE_CHARGE


def tax_treatment(
    country: str,
    vat_id: str | None,
    on: date,
    *,
    publisher_country: str,
    outside_eu_rate: Decimal = Decimal(0),
    vies: ViesResult | None = None,
    table: RateTable | None = None,
) -> TaxTreatment:
    """How a sale to a customer in ``country`` (with ``vat_id`` for a business) on ``on`` is taxed.

    Rules, in order:

    1. ``country`` outside the EU: ``outside_eu``, at ``outside_eu_rate`` (0 unless configured);
       an EU VAT id plays no part there.
    2. A ``vat_id`` is checked (python-stdnum, issued by ``country``); a malformed one raises
       :class:`InvalidVatIdError` naming the field ``vat_id``.
    3. A valid ``vat_id`` of a member state other than ``publisher_country``, and VIES not saying
       it is unregistered (``vies`` None, unreachable, or valid): ``reverse_charge`` at 0 %, with
       :data:`REVERSE_CHARGE_MENTION`.
    4. ``country`` is ``publisher_country``: ``domestic``, at that country's rate on ``on``.
    5. Otherwise: ``oss``, at ``country``'s rate on ``on`` (a business whose VAT id VIES rejected is
       taxed like a consumer of its country).
    """
    table = table or rate_table()
    country = country.upper()
    publisher_country = publisher_country.upper()
    if country not in EU_MEMBER_STATES:
        return TaxTreatment(TaxKind.OUTSIDE_EU, country, outside_eu_rate)
    compact = normalise_vat_id(vat_id, country=country) if vat_id else None
    vies_rejected = vies is not None and vies.valid is False
    if compact is not None and country != publisher_country and not vies_rejected:
        return TaxTreatment(
            TaxKind.REVERSE_CHARGE,
            country,
            Decimal(0),
            vat_id=compact,
            mention=REVERSE_CHARGE_MENTION,
            vies=vies,
        )
    kind = TaxKind.DOMESTIC if country == publisher_country else TaxKind.OSS
    return TaxTreatment(kind, country, table.rate_on(country, on), vat_id=compact, vies=vies)


# --- the customer's country ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CountryEvidence:
    """The evidence of where a reader is: OSS needs two pieces that do not contradict, the
    declared country and the card's; the IP country (GeoIP, when configured) supports them.

    ``agrees`` compares the declared and the card country only: an IP country that differs is
    recorded (a reader abroad, a VPN), never a reason to refuse or to ask again.
    """

    declared: str
    card: str | None
    ip: str | None = None

    @property
    def agrees(self) -> bool:
        """Whether the card's issuing country is unknown or the declared one."""
        return self.card is None or self.card.upper() == self.declared.upper()

    def as_dict(self, *, confirmed: bool) -> dict[str, Any]:
        """The evidence as stored on the customer and the invoice (``ip_country`` only when
        there is one, so without GeoIP the record is the same as before it existed)."""
        recorded: dict[str, Any] = {
            "declared_country": self.declared.upper(),
            "card_country": self.card.upper() if self.card else None,
            "agrees": self.agrees,
            "confirmed_by_reader": confirmed,
        }
        if self.ip is not None:
            recorded["ip_country"] = self.ip.upper()
        return recorded


def utc_day(moment: datetime) -> date:
    """The UTC calendar day of an aware moment (rates change at 00:00 UTC in this table)."""
    return moment.astimezone(UTC).date()
