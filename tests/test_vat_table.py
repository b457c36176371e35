"""The dated e-newspaper VAT rate table: the repository's file is whole, and a broken one is refused."""

from __future__ import annotations

import copy
import tomllib
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from billing.services.vat import (
    EU_MEMBER_STATES,
    RATE_TABLE_PATH,
    NoRateError,
    RateTable,
    RateTableError,
    load_rate_table,
)


@pytest.fixture
def raw() -> dict[str, Any]:
    """The repository's table as parsed TOML, to break in each test."""
    with RATE_TABLE_PATH.open("rb") as f:
        return tomllib.load(f)


def test_the_repository_table_has_a_rate_for_every_member_state_and_names_its_source() -> None:
    table = load_rate_table()

    assert {row.country for row in table.rows} == EU_MEMBER_STATES
    assert "taxation-customs.ec.europa.eu/tedb" in table.source
    assert table.checked_on >= table.covers_from
    assert all(row.basis for row in table.rows)


def test_every_member_state_has_a_rate_from_the_first_covered_day_without_gaps() -> None:
    table = load_rate_table()

    for country in EU_MEMBER_STATES:
        history = table.history(country)
        assert history[0].starts_on == table.covers_from, country
        assert len({row.starts_on for row in history}) == len(history), country


def test_a_rate_applies_from_its_date_until_the_next_row_of_its_country() -> None:
    table = load_rate_table()

    assert table.row_on("RO", date(2025, 7, 31)).rate == Decimal("5")
    assert table.row_on("RO", date(2025, 7, 31)).standard == Decimal("19")
    assert table.row_on("RO", date(2025, 8, 1)).rate == Decimal("11")
    assert table.row_on("RO", date(2025, 8, 1)).standard == Decimal("21")
    assert table.row_on("EE", date(2025, 6, 30)).standard == Decimal("22")
    assert table.row_on("EE", date(2025, 7, 1)).standard == Decimal("24")
    assert table.rate_on("fr", date(2026, 1, 1)) == Decimal("2.1")


def test_there_is_no_rate_before_the_table_or_outside_the_eu() -> None:
    table = load_rate_table()

    with pytest.raises(NoRateError, match="DE on 2024-12-31"):
        table.row_on("DE", date(2024, 12, 31))
    with pytest.raises(NoRateError, match="US"):
        table.row_on("US", date(2026, 1, 1))


def test_a_country_whose_first_rate_starts_late_is_refused_as_a_gap(raw: dict[str, Any]) -> None:
    first_de = next(row for row in raw["rate"] if row["country"] == "DE")
    first_de["from"] = date(2025, 3, 1)

    with pytest.raises(RateTableError, match=r"DE: gap from 2025-01-01 to 2025-03-01"):
        RateTable.from_mapping(raw)


def test_two_rows_of_a_country_on_one_date_are_refused_as_an_overlap(raw: dict[str, Any]) -> None:
    second = copy.deepcopy(next(row for row in raw["rate"] if row["country"] == "NL"))
    second["rate"] = "21"
    raw["rate"].append(second)

    with pytest.raises(RateTableError, match=r"NL: two rows start on 2025-01-01 \(overlap\)"):
        RateTable.from_mapping(raw)


def test_a_missing_member_state_is_refused(raw: dict[str, Any]) -> None:
    raw["rate"] = [row for row in raw["rate"] if row["country"] != "MT"]

    with pytest.raises(RateTableError, match="MT has no rate"):
        RateTable.from_mapping(raw)


def test_a_row_before_the_covered_period_is_refused(raw: dict[str, Any]) -> None:
    earlier = copy.deepcopy(next(row for row in raw["rate"] if row["country"] == "AT"))
    earlier["from"] = date(2020, 1, 1)
    raw["rate"].append(earlier)

    with pytest.raises(RateTableError, match="AT: a row starts 2020-01-01, before"):
        RateTable.from_mapping(raw)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rate", 7, 'must be decimal text like "5.5"'),
        ("rate", "seven", "is not a number"),
        ("rate", "101", "between 0 and 100"),
        ("rate", "7.12345", "more than four decimals"),
        ("rate", "25", "above the standard rate"),
        ("country", "GB", "not an EU member state"),
        ("basis", "", "cites no basis"),
        ("from", "the first of May", "is not a date"),
    ],
)
def test_a_bad_value_is_refused_naming_the_row(
    raw: dict[str, Any], field: str, value: object, message: str
) -> None:
    row = next(row for row in raw["rate"] if row["country"] == "DE")
    row[field] = value

    with pytest.raises(RateTableError, match=message):
        RateTable.from_mapping(raw)


def test_a_table_without_a_source_is_refused(raw: dict[str, Any]) -> None:
    raw["source"] = " "

    with pytest.raises(RateTableError, match="names no source"):
        RateTable.from_mapping(raw)


def test_the_cli_shows_the_rate_a_country_has_on_a_date(app: Flask, runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["billing", "vat-rate", "ro", "--on", "2025-08-01"])

    assert result.exit_code == 0, result.output
    assert "RO on 2025-08-01: 11% (standard rate 21%)" in result.output
    assert "applies from 2025-08-01" in result.output
    assert "  from 2025-01-01: 5% (standard 19%)" in result.output
    assert "* from 2025-08-01: 11% (standard 21%)" in result.output
    assert "taxation-customs.ec.europa.eu/tedb" in result.output


def test_the_cli_refuses_a_country_or_date_without_a_rate(
    app: Flask, runner: FlaskCliRunner
) -> None:
    outside = runner.invoke(args=["billing", "vat-rate", "US", "--on", "2026-01-01"])
    before = runner.invoke(args=["billing", "vat-rate", "DE", "--on", "2024-06-01"])
    garbled = runner.invoke(args=["billing", "vat-rate", "DE", "--on", "soon"])

    assert outside.exit_code == 1
    assert "no VAT rate for US on 2026-01-01" in outside.output
    assert before.exit_code == 1
    assert "covers the EU member states from 2025-01-01" in before.output
    assert garbled.exit_code == 2
    assert "not a date: 'soon'" in garbled.output
