"""E-mail normalisation and password rules."""

from __future__ import annotations

import pytest

from billing.errors import ValidationFailed
from billing.services.accounts import canonical_email, check_password, normalise_email


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Reader@Example.ORG ", "reader@example.org"),
        ("First.Last+x@Gmail.com", "first.last+x@gmail.com"),
    ],
)
def test_addresses_are_trimmed_and_lower_cased(raw: str, expected: str) -> None:
    assert normalise_email(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "no-at-sign", "two@@example.org", "a@b"])
def test_invalid_addresses_are_refused_naming_the_field(raw: str) -> None:
    with pytest.raises(ValidationFailed) as error:
        normalise_email(raw)
    assert error.value.field == "email"


@pytest.mark.parametrize(
    ("address", "person"),
    [
        ("first.last+x@gmail.com", "firstlast@gmail.com"),
        ("firstlast@googlemail.com", "firstlast@gmail.com"),
        ("f.i.r.s.t.l.a.s.t@gmail.com", "firstlast@gmail.com"),
        ("first.last+news@example.org", "first.last@example.org"),
        ("first.last@example.org", "first.last@example.org"),
    ],
)
def test_gmail_dots_and_plus_tags_name_the_same_person(address: str, person: str) -> None:
    assert canonical_email(address) == person


def test_a_short_password_is_refused() -> None:
    with pytest.raises(ValidationFailed, match="at least 10") as error:
        check_password("short")
    assert error.value.field == "password"


def test_the_email_address_is_not_accepted_as_a_password() -> None:
    with pytest.raises(ValidationFailed, match="e-mail"):
        check_password("reader@example.org", email="reader@example.org")
