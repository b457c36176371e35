"""E-mail normalisation and password rules."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.errors import ValidationFailed
from billing.services import accounts
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


def test_signing_up_with_a_taken_address_hashes_the_password_all_the_same(
    session: Session, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[str] = []
    real = accounts.hash_password
    monkeypatch.setattr(accounts, "hash_password", lambda p: hashed.append(p) or real(p))
    details = {"password": "a long password", "name": "Ada", "country": "BE", "now": clock.now()}

    accounts.signup(session, email="ada@example.org", **details)
    result = accounts.signup(session, email="Ada@Example.org", **details)

    assert result.reader is None and result.existing is not None
    assert len(hashed) == 2  # the answer for a taken address costs what a new one costs
