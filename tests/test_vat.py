"""Who pays which VAT: the decision, the arithmetic of inclusive prices, VAT ids and VIES."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.config import ConfigError, check, from_env
from billing.services.vat import (
    EU_MEMBER_STATES,
    REVERSE_CHARGE_MENTION,
    CountryEvidence,
    InvalidVatIdError,
    TaxKind,
    ViesResult,
    check_vies,
    exclusive_tax,
    inclusive_tax,
    normalise_vat_id,
    rate_table,
    tax_treatment,
)
from tests.helpers import StandInHandler, serving

ON = date(2026, 3, 1)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GERMAN_VAT_ID = "DE136695976"
BELGIAN_VAT_ID = "BE0411905847"
DUTCH_VAT_ID = "NL004495445B01"


def reference_tax(amount: int, rate: Decimal) -> int:
    """``amount * rate / (100 + rate)`` rounded half up, in exact rational arithmetic."""
    exact = Fraction(amount) * Fraction(rate) / (100 + Fraction(rate))
    whole, rest = divmod(exact, 1)
    return int(whole) + (1 if rest >= Fraction(1, 2) else 0)


# --- the arithmetic ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "rate", "tax"),
    [
        (1200, Decimal("7"), 79),  # 78.50...
        (1203, Decimal("20"), 201),  # exactly 200.5: half rounds up (half-even would give 200)
        (1215, Decimal("20"), 203),  # exactly 202.5
        (1200, Decimal("21"), 208),  # 208.26
        (12000, Decimal("2.1"), 247),  # 246.79
        (999, Decimal("25.5"), 203),  # 202.98
        (1200, Decimal("0"), 0),
        (0, Decimal("21"), 0),
        (-1203, Decimal("20"), -201),  # a refund: half away from zero
    ],
)
def test_the_vat_inside_a_gross_price_is_rounded_half_up(
    amount: int, rate: Decimal, tax: int
) -> None:
    assert inclusive_tax(amount, rate) == tax


rates = st.one_of(
    st.sampled_from(sorted({row.rate for row in rate_table().rows})),
    st.decimals(min_value=0, max_value=100, places=2, allow_nan=False, allow_infinity=False),
)


@given(amount=st.integers(min_value=0, max_value=10**9), rate=rates)
def test_net_and_vat_always_add_up_to_the_gross_price(amount: int, rate: Decimal) -> None:
    tax = inclusive_tax(amount, rate)

    assert tax == reference_tax(amount, rate)
    assert 0 <= tax <= amount
    assert (amount - tax) + tax == amount
    assert abs(Fraction(tax) - Fraction(amount) * Fraction(rate) / (100 + Fraction(rate))) <= (
        Fraction(1, 2)
    )


@given(amount=st.integers(min_value=1, max_value=10**9), rate=rates)
def test_a_full_refund_gives_back_exactly_the_vat_charged(amount: int, rate: Decimal) -> None:
    assert inclusive_tax(-amount, rate) == -inclusive_tax(amount, rate)


@given(amount=st.integers(min_value=-(10**9), max_value=10**9), rate=rates)
def test_the_vat_on_top_of_a_net_price_is_the_exact_amount_rounded_half_up(
    amount: int, rate: Decimal
) -> None:
    tax = exclusive_tax(amount, rate)

    exact = abs(Fraction(amount) * Fraction(rate) / 100)
    expected = int(exact) + (1 if exact - int(exact) >= Fraction(1, 2) else 0)
    assert tax == (expected if amount >= 0 else -expected)


# --- the decision --------------------------------------------------------------------------------


def test_a_reader_in_the_publishers_country_pays_its_domestic_rate() -> None:
    treatment = tax_treatment("be", None, ON, publisher_country="BE")

    assert treatment.kind == TaxKind.DOMESTIC
    assert (treatment.country, treatment.rate) == ("BE", Decimal("0"))


@pytest.mark.parametrize("country", sorted(EU_MEMBER_STATES - {"BE"}))
def test_a_reader_in_another_member_state_pays_that_states_rate(country: str) -> None:
    treatment = tax_treatment(country, None, ON, publisher_country="BE")

    assert treatment.kind == TaxKind.OSS
    assert treatment.country == country
    assert treatment.rate == rate_table().rate_on(country, ON)
    assert not treatment.reverse_charge


def test_a_reader_outside_the_eu_pays_no_vat_unless_configured() -> None:
    plain = tax_treatment("US", None, ON, publisher_country="BE")
    configured = tax_treatment(
        "CH", None, ON, publisher_country="BE", outside_eu_rate=Decimal("8.1")
    )

    assert (plain.kind, plain.rate) == (TaxKind.OUTSIDE_EU, Decimal(0))
    assert (configured.kind, configured.rate) == (TaxKind.OUTSIDE_EU, Decimal("8.1"))


def test_a_business_with_a_valid_vat_id_of_another_member_state_is_reverse_charged() -> None:
    treatment = tax_treatment("DE", "de 136 695 976", ON, publisher_country="BE")

    assert treatment.kind == TaxKind.REVERSE_CHARGE
    assert treatment.reverse_charge
    assert (treatment.rate, treatment.vat_id) == (Decimal(0), GERMAN_VAT_ID)
    assert treatment.mention == REVERSE_CHARGE_MENTION


def test_a_business_in_the_publishers_own_country_pays_domestic_vat() -> None:
    treatment = tax_treatment("DE", GERMAN_VAT_ID, ON, publisher_country="DE")

    assert treatment.kind == TaxKind.DOMESTIC
    assert treatment.rate == Decimal("7")
    assert treatment.vat_id == GERMAN_VAT_ID
    assert treatment.mention is None


def test_a_business_whose_vat_id_vies_rejects_is_taxed_like_a_consumer_of_its_country() -> None:
    rejected = ViesResult(DUTCH_VAT_ID, False, NOW)
    unanswered = ViesResult(DUTCH_VAT_ID, None, NOW, error="timed out")

    taxed = tax_treatment("NL", DUTCH_VAT_ID, ON, publisher_country="BE", vies=rejected)
    trusted = tax_treatment("NL", DUTCH_VAT_ID, ON, publisher_country="BE", vies=unanswered)

    assert (taxed.kind, taxed.rate) == (TaxKind.OSS, Decimal("9"))
    assert trusted.kind == TaxKind.REVERSE_CHARGE


@pytest.mark.parametrize(
    ("vat_id", "why"),
    [
        ("DE123", "“DE123” is not a valid EU VAT number: it has too many or too few"),
        ("DE136695978", "its check digit is wrong"),
        ("XX123456789", "not start with the two letters of an EU member state"),
        ("BE0123-ABC", "it is not written as one is"),
        ("   ", "Enter a VAT number"),
    ],
)
def test_a_malformed_vat_id_is_refused_naming_the_field(vat_id: str, why: str) -> None:
    with pytest.raises(InvalidVatIdError, match=why) as refused:
        tax_treatment("DE", vat_id, ON, publisher_country="BE")

    assert refused.value.field == "vat_id"
    assert refused.value.code == "invalid_vat_id"


def test_a_vat_id_of_another_country_than_the_customers_is_refused() -> None:
    with pytest.raises(InvalidVatIdError, match="a VAT number of DE, not of FR") as refused:
        tax_treatment("FR", GERMAN_VAT_ID, ON, publisher_country="BE")

    assert refused.value.field == "vat_id"


def test_greek_vat_ids_start_with_el_and_belong_to_gr() -> None:
    assert normalise_vat_id("EL 094259216", country="GR") == "EL094259216"


# --- evidence ------------------------------------------------------------------------------------


def test_country_evidence_agrees_when_the_card_is_from_the_declared_country_or_unknown() -> None:
    assert CountryEvidence("DE", "de").agrees
    assert CountryEvidence("DE", None).agrees
    assert not CountryEvidence("DE", "BE").agrees
    assert CountryEvidence("de", "BE").as_dict(confirmed=True) == {
        "declared_country": "DE",
        "card_country": "BE",
        "agrees": False,
        "confirmed_by_reader": True,
    }


# --- VIES ----------------------------------------------------------------------------------------


class _Vies(StandInHandler):
    """VIES's REST answer: registered numbers end in an even digit; ``DE999999999`` errors."""

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        number = parts[-1]
        if number == "999999999":
            self.send_response(500)
            self.end_headers()
            return
        self.send_json(
            {"isValid": int(number[-1]) % 2 == 0, "name": "Example GmbH", "path": self.path}
        )


@pytest.fixture
def vies_url() -> Iterator[str]:
    """A VIES stand-in on a free port."""
    with serving(_Vies) as base:
        yield f"{base}/vies"


def test_vies_confirms_a_registered_vat_id_and_the_answer_is_dated(vies_url: str) -> None:
    result = check_vies("DE136695976", url=vies_url, timeout=2, now=NOW)

    assert (result.valid, result.name, result.checked_at) == (True, "Example GmbH", NOW)


def test_vies_rejecting_a_vat_id_is_recorded_as_invalid(vies_url: str) -> None:
    result = check_vies("DE136695977", url=vies_url, timeout=2, now=NOW)

    assert result.valid is False
    assert result.error is None


def test_a_vies_failure_is_no_answer_and_never_an_exception(vies_url: str) -> None:
    failed = check_vies("DE999999999", url=vies_url, timeout=2, now=NOW)
    refused = check_vies("DE136695976", url="http://127.0.0.1:9/vies", timeout=2, now=NOW)
    not_http = check_vies("DE136695976", url="file:///etc", timeout=2, now=NOW)

    assert failed.valid is None and "500" in (failed.error or "")
    assert refused.valid is None and refused.error
    assert not_http.valid is None and "not http(s)" in (not_http.error or "")


def test_a_vies_that_does_not_answer_in_time_counts_as_no_answer() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]

        result = check_vies("DE136695976", url=f"http://127.0.0.1:{port}", timeout=0.2, now=NOW)

    assert result.valid is None
    assert "timed out" in (result.error or "")


# --- settings ------------------------------------------------------------------------------------


def test_the_publisher_country_and_vat_id_are_checked_at_start() -> None:
    good = from_env({"PUBLISHER_COUNTRY": "de", "PUBLISHER_VAT_ID": "DE 136 695 976"})
    check(good)
    assert good["PUBLISHER_COUNTRY"] == "DE"

    with pytest.raises(ConfigError, match="PUBLISHER_COUNTRY must be an EU member state"):
        check(from_env({"PUBLISHER_COUNTRY": "US"}))
    with pytest.raises(ConfigError, match=r"PUBLISHER_VAT_ID: .*not of BE"):
        check(from_env({"PUBLISHER_VAT_ID": GERMAN_VAT_ID}))
    with pytest.raises(ConfigError, match="VAT_OUTSIDE_EU_RATE"):
        check(from_env({"VAT_OUTSIDE_EU_RATE": "lots"}))
