"""Visitors' addresses as the API reads them: ``group_networks.normalised_address`` accepts
exactly what ``ipaddress`` accepts (zone ids aside), and writes each in one canonical form."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.services.group_networks import normalised_address


def accepted_by_ipaddress(text: str) -> bool:
    """Whether the standard library reads ``text`` as an address without a zone id."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return "%" not in text


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("2001:0db8::0001", "2001:db8::1"),
        ("::", "::"),
        ("::ffff:192.0.2.7", "::ffff:192.0.2.7"),
        ("::ffff:c000:0207", "::ffff:192.0.2.7"),
    ],
)
def test_an_address_is_written_in_its_canonical_form(written: str, canonical: str) -> None:
    assert normalised_address(written) == canonical


@pytest.mark.parametrize(
    "text",
    ["127.1", "01.2.3.4", "1.2.3.4.5", "256.0.0.1", "1::2::3", "fe80::1%eth0", " 1.2.3.4", ""],
)
def test_what_is_not_a_plain_address_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        normalised_address(text)


@given(st.ip_addresses())
def test_every_address_reads_back_as_the_same_address(address: object) -> None:
    assert ipaddress.ip_address(normalised_address(str(address))) == address


@given(st.text(alphabet="0123456789abcdefABCDEF:.%", max_size=45))
def test_it_accepts_exactly_what_the_standard_library_accepts(text: str) -> None:
    try:
        normalised_address(text)
    except ValueError:
        assert not accepted_by_ipaddress(text)
    else:
        assert accepted_by_ipaddress(text)
