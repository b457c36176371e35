"""Signed access tokens: issue, verify, expiry, tampering, rotation, and the documented format.

Every test passes its own ``now``: no wall clock, no sleeps. One test re-implements verification
with the standard library alone, following the module docstring, so that the prose a content site
in another language relies on is checked against real tokens.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import time_machine
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import URLSafeTimedSerializer

from billing.services import tokens
from billing.services.tokens import (
    CLOCK_SKEW,
    DEFAULT_TTL,
    SALT,
    AccessClaims,
    TokenExpired,
    TokenInvalid,
    TokenSigner,
)

NOW = datetime(2026, 11, 25, 9, 30, 0, tzinfo=UTC)
NEW = "new-secret-3b8f0e1c6a2d4f9e8b7c5a1d0e2f4a6b"
OLD = "old-secret-9c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"
TOKENS_PY = Path(__file__).resolve().parent.parent / "billing" / "services" / "tokens.py"
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def decision(**overrides: Any) -> dict[str, Any]:
    """The keyword arguments of ``issue`` for a paying subscriber, with ``overrides``."""
    values: dict[str, Any] = {
        "reader_id": "rdr_7Hq2kXw9Lm4Pz",
        "granted": True,
        "reason": "subscription",
        "plan": "individual-monthly",
        "group": None,
        "until": NOW + timedelta(days=23),
        "client_id": "cli_content_site",
        "now": NOW,
    }
    values.update(overrides)
    return values


def issue(secrets: list[str] | None = None, **overrides: Any) -> str:
    """A token for ``decision(**overrides)`` signed under ``secrets`` (default: the new key)."""
    token, _ = TokenSigner(secrets or [NEW]).issue(**decision(**overrides))
    return token


def raw_serializer(secrets: list[str], salt: str = SALT, **signer_kwargs: Any) -> Any:
    """Plain itsdangerous, configured as the issue specifies (it signs with its LAST key)."""
    return URLSafeTimedSerializer(
        list(reversed(secrets)),
        salt=salt,
        signer_kwargs={"digest_method": hashlib.sha256, **signer_kwargs},
    )


def raw_dumps(serializer: Any, payload: Any) -> str:
    """``serializer.dumps(payload)`` without the compression Tollgate never uses."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    signed: bytes = serializer.make_signer().sign(b64url_encode(body))
    return signed.decode("ascii")


def decision_payload() -> dict[str, Any]:
    """The payload of a token for ``decision()``, as its JSON object."""
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(issue().split(".")[0] + "=="))
    return payload


def replace_at(token: str, index: int, char: str) -> str:
    """``token`` with the character at ``index`` replaced by ``char``."""
    return token[:index] + char + token[index + 1 :]


def other_char(char: str) -> str:
    """A base64url character other than ``char``."""
    return "A" if char != "A" else "B"


# Round trip -------------------------------------------------------------------------------------


def test_a_token_round_trips_the_decision() -> None:
    signer = TokenSigner([NEW])
    token, expires_at = signer.issue(**decision())

    claims = signer.verify(token, now=NOW)

    assert claims == AccessClaims(
        reader_id="rdr_7Hq2kXw9Lm4Pz",
        granted=True,
        reason="subscription",
        plan="individual-monthly",
        group=None,
        until=NOW + timedelta(days=23),
        client_id="cli_content_site",
        issued_at=NOW,
        expires_at=NOW + DEFAULT_TTL,
    )
    assert expires_at == NOW + DEFAULT_TTL


def test_a_group_decision_for_an_anonymous_reader_round_trips() -> None:
    token = issue(reader_id=None, reason="group_ip", plan=None, group="grp_eu_parliament")

    claims = TokenSigner([NEW]).verify(token, now=NOW)

    assert claims.reader_id is None
    assert (claims.reason, claims.group, claims.plan) == ("group_ip", "grp_eu_parliament", None)


def test_a_refusal_is_issued_too_so_the_content_site_knows_why() -> None:
    token = issue(granted=False, reason="payment_failed", until=None)

    claims = TokenSigner([NEW]).verify(token, now=NOW)

    assert (claims.granted, claims.reason, claims.until) == (False, "payment_failed", None)


def test_an_until_in_another_time_zone_comes_back_in_utc_to_the_second() -> None:
    cet = timezone(timedelta(hours=1))
    until = datetime(2027, 1, 1, 12, 0, 30, 250_000, tzinfo=UTC) + timedelta(hours=1)

    claims = TokenSigner([NEW]).verify(issue(until=until.astimezone(cet)), now=NOW)

    assert claims.until == until.replace(microsecond=0)
    assert claims.until is not None and claims.until.utcoffset() == timedelta(0)


def test_non_ascii_text_survives_the_round_trip() -> None:
    token = issue(group="Ministère de l'Économie — Direction générale")

    assert TokenSigner([NEW]).verify(token, now=NOW).group == (
        "Ministère de l'Économie — Direction générale"
    )


def test_plain_itsdangerous_reads_our_tokens() -> None:
    token = issue([NEW, OLD])

    payload, signed_at = raw_serializer([NEW, OLD]).loads(token, return_timestamp=True)

    assert signed_at == NOW
    assert payload["reader_id"] == "rdr_7Hq2kXw9Lm4Pz"
    assert payload["exp"] == int((NOW + DEFAULT_TTL).timestamp())


def test_a_token_signed_by_plain_itsdangerous_with_our_key_salt_and_digest_verifies() -> None:
    serializer = raw_serializer([NEW])
    with time_machine.travel(NOW, tick=False):  # plain itsdangerous signs the wall clock
        token = raw_dumps(serializer, decision_payload())
    signed_at = serializer.loads(token, return_timestamp=True)[1]

    claims = TokenSigner([NEW]).verify(token, now=signed_at)

    assert claims.reader_id == "rdr_7Hq2kXw9Lm4Pz"


def test_a_compressed_token_is_refused_even_when_genuine() -> None:
    token = raw_serializer([NEW]).dumps(decision_payload())
    assert token.startswith("."), "plain itsdangerous compresses this payload"

    with pytest.raises(TokenInvalid, match="malformed"):
        TokenSigner([NEW]).verify(token, now=NOW)


# Lifetime and expiry ----------------------------------------------------------------------------


def test_a_token_is_valid_until_the_last_second_of_its_lifetime() -> None:
    token = issue()

    claims = TokenSigner([NEW]).verify(token, now=NOW + DEFAULT_TTL - timedelta(microseconds=1))

    assert claims.expires_at == NOW + DEFAULT_TTL


def test_a_token_has_expired_at_its_expiry_time() -> None:
    token = issue()

    with pytest.raises(TokenExpired):
        TokenSigner([NEW]).verify(token, now=NOW + DEFAULT_TTL)


def test_an_expired_token_is_also_an_invalid_one_for_callers_that_catch_only_that() -> None:
    with pytest.raises(TokenInvalid):
        TokenSigner([NEW]).verify(issue(), now=NOW + timedelta(hours=1))


def test_the_lifetime_is_the_signers_ttl() -> None:
    signer = TokenSigner([NEW], ttl=timedelta(minutes=2))
    token, expires_at = signer.issue(**decision())

    assert expires_at == NOW + timedelta(minutes=2)
    signer.verify(token, now=NOW + timedelta(minutes=1, seconds=59))
    with pytest.raises(TokenExpired):
        signer.verify(token, now=NOW + timedelta(minutes=2))


def test_the_lifetime_is_capped_at_the_decisions_until() -> None:
    until = NOW + timedelta(minutes=4)
    signer = TokenSigner([NEW])
    token, expires_at = signer.issue(**decision(until=until))

    assert expires_at == until
    assert signer.verify(token, now=until - timedelta(seconds=1)).expires_at == until
    with pytest.raises(TokenExpired):
        signer.verify(token, now=until)


def test_a_token_never_outlives_an_until_that_falls_inside_a_second() -> None:
    until = NOW + timedelta(minutes=4, microseconds=600_000)

    _, expires_at = TokenSigner([NEW]).issue(**decision(until=until))

    assert expires_at == NOW + timedelta(minutes=4)


@pytest.mark.parametrize(
    "until",
    [NOW - timedelta(days=1), NOW, NOW + timedelta(microseconds=999_999)],
    ids=["yesterday", "now", "within the second"],
)
def test_a_granted_decision_that_ends_before_a_token_could_live_is_refused(
    until: datetime,
) -> None:
    with pytest.raises(ValueError, match="decide again"):
        TokenSigner([NEW]).issue(**decision(until=until))


def test_a_refusal_lives_for_the_whole_ttl_whatever_its_until_says() -> None:
    ended = NOW - timedelta(days=2)

    token, expires_at = TokenSigner([NEW]).issue(
        **decision(granted=False, reason="trial_expired", until=ended)
    )

    assert expires_at == NOW + DEFAULT_TTL
    assert TokenSigner([NEW]).verify(token, now=NOW).until == ended


def test_a_token_signed_a_little_in_the_future_is_tolerated() -> None:
    token = issue(now=NOW + CLOCK_SKEW)

    assert TokenSigner([NEW]).verify(token, now=NOW).issued_at == NOW + CLOCK_SKEW


def test_a_token_signed_further_in_the_future_is_invalid() -> None:
    token = issue(now=NOW + CLOCK_SKEW + timedelta(seconds=1))

    with pytest.raises(TokenInvalid, match="future") as caught:
        TokenSigner([NEW]).verify(token, now=NOW)
    assert not isinstance(caught.value, TokenExpired)


def test_max_age_expires_a_token_older_than_it() -> None:
    token = issue()
    signer = TokenSigner([NEW])

    signer.verify(token, now=NOW + timedelta(minutes=5), max_age=timedelta(minutes=5))
    with pytest.raises(TokenExpired, match="older"):
        signer.verify(
            token, now=NOW + timedelta(minutes=5, seconds=1), max_age=timedelta(minutes=5)
        )


# Tampering and foreign tokens -------------------------------------------------------------------


def test_a_changed_payload_character_is_invalid() -> None:
    token = issue()

    with pytest.raises(TokenInvalid):
        TokenSigner([NEW]).verify(replace_at(token, 10, other_char(token[10])), now=NOW)


def test_a_rewritten_payload_under_the_old_signature_is_invalid() -> None:
    token = issue(granted=False, reason="none", until=None)
    payload_part, timestamp, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(payload_part + "=="))
    payload.update(granted=True, reason="complimentary")
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()

    with pytest.raises(TokenInvalid):
        TokenSigner([NEW]).verify(f"{forged}.{timestamp}.{signature}", now=NOW)


def test_a_changed_timestamp_is_invalid() -> None:
    token = issue()
    payload_part, _, signature = token.split(".")
    later = base64.urlsafe_b64encode(int(NOW.timestamp() + 3600).to_bytes(4, "big"))

    with pytest.raises(TokenInvalid):
        TokenSigner([NEW]).verify(f"{payload_part}.{later.decode()}.{signature}", now=NOW)


def test_a_changed_signature_is_invalid() -> None:
    token = issue()

    with pytest.raises(TokenInvalid):
        TokenSigner([NEW]).verify(replace_at(token, -5, other_char(token[-5])), now=NOW)


def test_a_signature_with_a_non_canonical_last_character_is_invalid() -> None:
    token = issue()
    # The last of 43 characters carries 2 unused bits: flipping them keeps the decoded bytes.
    twin = BASE64URL[BASE64URL.index(token[-1]) ^ 1]
    assert base64.urlsafe_b64decode(token[-43:] + "=") == base64.urlsafe_b64decode(
        token[-43:-1] + twin + "="
    )

    with pytest.raises(TokenInvalid):
        TokenSigner([NEW]).verify(token[:-1] + twin, now=NOW)


def test_a_token_from_another_salt_is_invalid() -> None:
    token = raw_dumps(raw_serializer([NEW], salt="tollgate.verify-email.v1"), decision_payload())

    with pytest.raises(TokenInvalid):
        TokenSigner([NEW]).verify(token, now=NOW)


def test_a_token_signed_with_the_sha1_default_digest_is_invalid() -> None:
    token = raw_dumps(URLSafeTimedSerializer(NEW, salt=SALT), decision_payload())

    with pytest.raises(TokenInvalid):
        TokenSigner([NEW]).verify(token, now=NOW)


def test_a_token_signed_with_an_unknown_key_is_invalid() -> None:
    with pytest.raises(TokenInvalid):
        TokenSigner([NEW, OLD]).verify(issue(["some-other-secret"]), now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "nonsense",
        "a.b",
        "a.b.c",
        "..",
        "eyJhIjoxfQ.awZFsg." + "A" * 44,
        ".eJyrVkrOz0tNLlGyUkpKLElUqgUAQy4GkA.awZFsg." + "A" * 43,
        "eyJhIjoxfQ.awZFsg." + "A" * 42 + "é",
        "eyJhIjoxfQ.awZ Fsg." + "A" * 43,
        "x" * 5000 + ".awZFsg." + "A" * 43,
    ],
    ids=[
        "empty",
        "one part",
        "two parts",
        "short signature",
        "empty parts",
        "long signature",
        "compressed payload",
        "non-ascii",
        "space",
        "too long",
    ],
)
def test_a_malformed_token_is_invalid(token: str) -> None:
    with pytest.raises(TokenInvalid):
        TokenSigner([NEW]).verify(token, now=NOW)


@pytest.mark.parametrize(
    "payload",
    [
        ["not", "an", "object"],
        "a string",
        {"granted": True},
        {**decision(), "granted": "yes"},
        {**decision(), "reason": None},
        {**decision(), "plan": 3},
        {**decision(), "exp": "soon"},
        {**decision(), "exp": 10**20},
        {**decision(), "until": "tomorrow"},
        {**decision(), "until": "2027-01-01T00:00:00"},
    ],
    ids=[
        "list",
        "string",
        "missing fields",
        "granted not bool",
        "reason null",
        "plan not string",
        "exp not int",
        "exp out of range",
        "until not a date",
        "until naive",
    ],
)
def test_a_genuine_token_with_a_payload_of_the_wrong_shape_is_invalid(payload: Any) -> None:
    if isinstance(payload, dict):
        payload = {key: value for key, value in payload.items() if key != "now"}
        payload.setdefault("exp", int((NOW + DEFAULT_TTL).timestamp()))
        if isinstance(payload.get("until"), datetime):
            payload["until"] = payload["until"].strftime("%Y-%m-%dT%H:%M:%SZ")
    token = sign_as_documented(payload, NEW, NOW)

    with pytest.raises(TokenInvalid, match="shape"):
        TokenSigner([NEW]).verify(token, now=NOW)


def test_a_token_minted_by_the_documented_steps_verifies() -> None:
    payload = {
        "reader_id": "rdr_1",
        "granted": True,
        "reason": "complimentary",
        "plan": None,
        "group": None,
        "until": None,
        "client_id": None,
        "exp": int(NOW.timestamp()) + 60,
    }

    claims = TokenSigner([OLD, NEW]).verify(sign_as_documented(payload, NEW, NOW), now=NOW)

    assert (claims.reason, claims.expires_at) == ("complimentary", NOW + timedelta(seconds=60))


# Key rotation -----------------------------------------------------------------------------------


def test_a_token_signed_with_an_old_key_still_verifies() -> None:
    token = issue([OLD])

    assert TokenSigner([NEW, OLD]).verify(token, now=NOW).reader_id == "rdr_7Hq2kXw9Lm4Pz"


def test_the_first_secret_signs() -> None:
    token = issue([NEW, OLD])

    assert TokenSigner([NEW, OLD]).verify(token, now=NOW).granted
    assert TokenSigner([NEW]).verify(token, now=NOW).granted
    with pytest.raises(TokenInvalid):
        TokenSigner([OLD]).verify(token, now=NOW)


def test_a_token_signed_with_a_retired_key_is_invalid() -> None:
    with pytest.raises(TokenInvalid):
        TokenSigner([NEW]).verify(issue([OLD]), now=NOW)


def test_bytes_and_text_secrets_are_the_same_secret() -> None:
    token = issue([NEW])

    assert TokenSigner([NEW.encode()]).verify(token, now=NOW).granted


def test_a_single_secret_string_is_not_mistaken_for_a_list_of_secrets() -> None:
    with pytest.raises(TypeError):
        TokenSigner(NEW)


@pytest.mark.parametrize("secrets", [[], [NEW, ""]], ids=["no secret", "an empty secret"])
def test_a_signer_needs_non_empty_secrets(secrets: list[str]) -> None:
    with pytest.raises(ValueError, match="secret"):
        TokenSigner(secrets)


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-1), timedelta(seconds=0.5)])
def test_a_signer_needs_a_ttl_of_at_least_a_second(ttl: timedelta) -> None:
    with pytest.raises(ValueError, match="ttl"):
        TokenSigner([NEW], ttl=ttl)


def test_naive_datetimes_are_refused() -> None:
    naive = NOW.replace(tzinfo=None)
    signer = TokenSigner([NEW])

    with pytest.raises(ValueError, match="now"):
        signer.issue(**decision(now=naive))
    with pytest.raises(ValueError, match="until"):
        signer.issue(**decision(until=naive + timedelta(days=1)))
    with pytest.raises(ValueError, match="now"):
        signer.verify(issue(), now=naive)


# The module-level verifier for content sites ----------------------------------------------------


def test_the_module_level_verify_checks_a_token_against_a_list_of_secrets() -> None:
    claims = tokens.verify(issue([OLD]), [NEW, OLD], now=NOW)

    assert claims.reader_id == "rdr_7Hq2kXw9Lm4Pz"
    with pytest.raises(TokenExpired):
        tokens.verify(issue([OLD]), [NEW, OLD], now=NOW + DEFAULT_TTL)


def test_the_module_level_verify_reads_the_wall_clock_when_given_no_time() -> None:
    wall = datetime.now(UTC)
    fresh = issue(now=wall, until=None)
    stale = issue(now=wall - timedelta(hours=1), until=None)

    assert tokens.verify(fresh, [NEW]).reader_id == "rdr_7Hq2kXw9Lm4Pz"
    with pytest.raises(TokenExpired):
        tokens.verify(stale, [NEW])


def test_the_module_imports_alone_without_flask_sqlalchemy_or_the_app() -> None:
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('tokens', {str(TOKENS_PY)!r})\n"
        "module = sys.modules['tokens'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert module.TokenSigner and module.verify\n"
        "print(sorted(name for name in sys.modules"
        " if name.split('.')[0] in {'flask', 'sqlalchemy', 'billing', 'werkzeug'}))\n"
    )

    result = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


# The documented format, checked with the standard library alone ---------------------------------


def b64url_decode(text: str) -> bytes:
    """Unpadded base64url, as the docstring describes it."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_as_documented(token: str, secrets: list[str], now: datetime) -> dict[str, Any]:
    """The module docstring's four steps, with hmac, hashlib, base64 and json only."""
    parts = token.encode("ascii").decode("ascii").split(".")  # step 1
    if len(parts) != 3:
        raise ValueError("malformed: not three parts")
    payload_part, timestamp_part, signature = parts
    signing_input = f"{payload_part}.{timestamp_part}".encode("ascii")
    for secret in secrets:  # step 2
        key = hashlib.sha256(b"tollgate.access-token.v1" + b"signer" + secret.encode()).digest()
        mac = hmac.new(key, signing_input, hashlib.sha256).digest()
        expected = b64url_encode(mac)
        if hmac.compare_digest(expected, signature):
            break
    else:
        raise ValueError("bad signature")
    signed_at = int.from_bytes(b64url_decode(timestamp_part), "big")  # step 3
    if signed_at > now.timestamp() + 60:
        raise ValueError("signed in the future")
    payload: dict[str, Any] = json.loads(b64url_decode(payload_part).decode("utf-8"))  # step 4
    if now.timestamp() >= payload["exp"]:
        raise ValueError("expired")
    return payload


def sign_as_documented(payload: Any, secret: str, signed_at: datetime) -> str:
    """The inverse of :func:`verify_as_documented`: a token minted from the docstring's format."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    seconds = int(signed_at.timestamp())
    timestamp = seconds.to_bytes((seconds.bit_length() + 7) // 8, "big")
    signing_input = b64url_encode(body) + "." + b64url_encode(timestamp)
    key = hashlib.sha256(b"tollgate.access-token.v1" + b"signer" + secret.encode()).digest()
    mac = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + b64url_encode(mac)


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, as the docstring describes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def test_the_documented_format_verifies_real_tokens_with_the_standard_library_alone() -> None:
    until = NOW + timedelta(minutes=7)
    token = issue([OLD], group="Ministère", until=until)

    payload = verify_as_documented(token, [NEW, OLD], NOW)

    assert payload == {
        "reader_id": "rdr_7Hq2kXw9Lm4Pz",
        "granted": True,
        "reason": "subscription",
        "plan": "individual-monthly",
        "group": "Ministère",
        "until": "2026-11-25T09:37:00Z",
        "client_id": "cli_content_site",
        "exp": int(until.timestamp()),
    }
    assert len(token.split(".")[1]) == 6
    assert len(token.split(".")[2]) == 43


def test_the_documented_format_rejects_what_the_module_rejects() -> None:
    token = issue()
    twin = BASE64URL[BASE64URL.index(token[-1]) ^ 1]

    for bad in (replace_at(token, 10, other_char(token[10])), token[:-1] + twin):
        with pytest.raises(ValueError, match="signature"):
            verify_as_documented(bad, [NEW], NOW)
    with pytest.raises(ValueError, match="signature"):
        verify_as_documented(token, [OLD], NOW)
    with pytest.raises(ValueError, match="expired"):
        verify_as_documented(token, [NEW], NOW + DEFAULT_TTL)
    with pytest.raises(ValueError, match="future"):
        verify_as_documented(issue(now=NOW + timedelta(seconds=61)), [NEW], NOW)


# Properties -------------------------------------------------------------------------------------

moments = st.datetimes(
    min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
)
optional_text = st.none() | st.text(max_size=40)


@given(
    reader_id=optional_text,
    granted=st.booleans(),
    reason=st.text(max_size=40),
    plan=optional_text,
    group=optional_text,
    client_id=optional_text,
    now=moments,
    lasts=st.none()
    | st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=800)),
    ttl_seconds=st.integers(min_value=1, max_value=86_400),
)
def test_any_decision_round_trips(
    reader_id: str | None,
    granted: bool,
    reason: str,
    plan: str | None,
    group: str | None,
    client_id: str | None,
    now: datetime,
    lasts: timedelta | None,
    ttl_seconds: int,
) -> None:
    signer = TokenSigner([NEW, OLD], ttl=timedelta(seconds=ttl_seconds))
    until = None if lasts is None else now + lasts
    issue_it = functools.partial(
        signer.issue,
        reader_id=reader_id,
        granted=granted,
        reason=reason,
        plan=plan,
        group=group,
        until=until,
        client_id=client_id,
        now=now,
    )
    if granted and until is not None and int(until.timestamp()) <= now.timestamp():
        with pytest.raises(ValueError, match="decide again"):
            issue_it()
        return
    token, expires_at = issue_it()

    claims = signer.verify(token, now=now)

    assert (claims.reader_id, claims.granted, claims.reason) == (reader_id, granted, reason)
    assert (claims.plan, claims.group, claims.client_id) == (plan, group, client_id)
    assert claims.until == (None if until is None else until.replace(microsecond=0))
    assert claims.issued_at == now.replace(microsecond=0)
    assert claims.expires_at == expires_at
    assert expires_at <= now + timedelta(seconds=ttl_seconds)
    if granted and until is not None:
        assert expires_at <= until
    assert verify_as_documented(token, [OLD, NEW], now)["reason"] == reason


@given(
    index=st.integers(min_value=0),
    replacement=st.sampled_from(BASE64URL + ".=+/ é"),
    now=moments,
)
def test_any_single_character_change_makes_a_token_invalid(
    index: int, replacement: str, now: datetime
) -> None:
    signer = TokenSigner([NEW])
    token, _ = signer.issue(**decision(now=now, until=None))
    index %= len(token)
    if token[index] == replacement:
        replacement = other_char(replacement)

    changed = replace_at(token, index, replacement)

    with pytest.raises(TokenInvalid):
        signer.verify(changed, now=now)
    with pytest.raises(ValueError, match=r"signature|malformed|ascii"):
        verify_as_documented(changed, [NEW], now)


def test_the_worked_example_in_the_readme_verifies() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    token = re.search(r"```\n\s*(eyJ[\w.-]+)\n\s*```", readme)
    payload = re.search(r"```json\n\s*(\{.*\})\n\s*```", readme)
    assert token and payload
    claims = tokens.TokenSigner(["readme-example-secret"]).verify(
        token.group(1), now=datetime(2026, 11, 25, 9, 14, 59, tzinfo=UTC)
    )
    expected = json.loads(payload.group(1))
    assert claims.reader_id == expected["reader_id"]
    assert (claims.granted, claims.reason, claims.client_id) == (
        True,
        "trial",
        "cli_demo-newspaper",
    )
    assert int(claims.expires_at.timestamp()) == expected["exp"]
    with pytest.raises(tokens.TokenExpired):
        tokens.TokenSigner(["readme-example-secret"]).verify(
            token.group(1), now=datetime(2026, 11, 25, 9, 15, tzinfo=UTC)
        )
