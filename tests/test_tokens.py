"""Signed access tokens: issue, verify, expiry, tampering, key sets, and the documented format.

Every test passes its own ``now``: no wall clock, no sleeps. One verifier here is written with the
standard library alone from the README's "Token format" section, so that the prose a content site
in another language relies on is checked against real tokens, and both worked examples of the
README are checked value by value.
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
from itsdangerous import TimestampSigner

from billing.services import tokens
from billing.services.tokens import (
    CLOCK_SKEW,
    DEFAULT_TTL,
    SALT,
    AccessClaims,
    TokenExpired,
    TokenInvalid,
    TokenKey,
    TokenSigner,
)

NOW = datetime(2026, 11, 25, 9, 30, 0, tzinfo=UTC)
NEW = TokenKey.parse("tk_NewKey01.3b8f0e1c6a2d4f9e8b7c5a1d0e2f4a6b3b8f0e1c6a2")
OLD = TokenKey.parse("tk_OldKey01.9c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f9c1d2e3f4a5")
CLIENT = "cli_content_site"
TOKENS_PY = Path(__file__).resolve().parent.parent / "billing" / "services" / "tokens.py"
README = Path(__file__).resolve().parent.parent / "README.md"
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def decision(**overrides: Any) -> dict[str, Any]:
    """The keyword arguments of ``issue`` for a paying subscriber, with ``overrides``."""
    values: dict[str, Any] = {
        "reader_id": "rdr_7Hq2kXw9Lm4Pz",
        "reason": "subscription",
        "plan": "individual-monthly",
        "group_id": None,
        "until": NOW + timedelta(days=23),
        "now": NOW,
    }
    values.update(overrides)
    return values


def signer(
    keys: list[TokenKey] | None = None, client_id: str = CLIENT, **kwargs: Any
) -> TokenSigner:
    """A signer for ``client_id`` with ``keys`` (default: the new key)."""
    return TokenSigner(keys or [NEW], client_id=client_id, **kwargs)


def issue(keys: list[TokenKey] | None = None, client_id: str = CLIENT, **overrides: Any) -> str:
    """A token for ``decision(**overrides)`` signed with the first of ``keys``."""
    token, _ = signer(keys, client_id).issue(**decision(**overrides))
    return token


def decision_payload() -> dict[str, Any]:
    """The payload of a token for ``decision()``, as its JSON object."""
    payload: dict[str, Any] = json.loads(b64url_decode(issue().split(".")[1]))
    return payload


def replace_at(token: str, index: int, char: str) -> str:
    """``token`` with the character at ``index`` replaced by ``char``."""
    return token[:index] + char + token[index + 1 :]


def other_char(char: str) -> str:
    """A base64url character other than ``char``."""
    return "A" if char != "A" else "B"


# Round trip -------------------------------------------------------------------------------------


def test_a_token_round_trips_the_grant() -> None:
    token, expires_at = signer().issue(**decision())

    claims = signer().verify(token, now=NOW)

    assert claims == AccessClaims(
        reader_id="rdr_7Hq2kXw9Lm4Pz",
        reason="subscription",
        plan="individual-monthly",
        group_id=None,
        until=NOW + timedelta(days=23),
        client_id=CLIENT,
        kid=NEW.kid,
        issued_at=NOW,
        expires_at=NOW + DEFAULT_TTL,
    )
    assert expires_at == NOW + DEFAULT_TTL


def test_a_token_names_its_key_in_its_first_part_and_its_client_in_the_payload() -> None:
    token = issue()

    assert token.split(".")[0] == NEW.kid
    assert decision_payload()["client_id"] == CLIENT
    assert set(decision_payload()) == {
        "reader_id",
        "reason",
        "plan",
        "group_id",
        "until",
        "client_id",
        "exp",
    }


def test_a_group_grant_for_an_anonymous_reader_round_trips() -> None:
    token = issue(reader_id=None, reason="group_ip", plan=None, group_id="grp_eu_parliament")

    claims = signer().verify(token, now=NOW)

    assert claims.reader_id is None
    assert (claims.reason, claims.group_id, claims.plan) == ("group_ip", "grp_eu_parliament", None)


def test_an_until_in_another_time_zone_comes_back_in_utc_to_the_second() -> None:
    cet = timezone(timedelta(hours=1))
    until = datetime(2027, 1, 1, 12, 0, 30, 250_000, tzinfo=UTC) + timedelta(hours=1)

    claims = signer().verify(issue(until=until.astimezone(cet)), now=NOW)

    assert claims.until == until.replace(microsecond=0)
    assert claims.until is not None and claims.until.utcoffset() == timedelta(0)


def test_non_ascii_text_survives_the_round_trip() -> None:
    token = issue(group_id="Ministère de l'Économie — Direction générale")

    assert signer().verify(token, now=NOW).group_id == (
        "Ministère de l'Économie — Direction générale"
    )


def test_plain_itsdangerous_checks_the_signature_of_our_tokens() -> None:
    token = issue([NEW, OLD])

    value, signed_at = TimestampSigner(NEW.secret, salt=SALT, digest_method=hashlib.sha256).unsign(
        token, return_timestamp=True
    )

    assert signed_at == NOW
    assert value.split(b".")[0] == NEW.kid.encode()


def test_a_token_signed_by_plain_itsdangerous_with_our_key_salt_and_digest_verifies() -> None:
    body = json.dumps(decision_payload(), separators=(",", ":")).encode()
    plain = TimestampSigner(NEW.secret, salt=SALT, digest_method=hashlib.sha256)
    with time_machine.travel(NOW, tick=False):  # plain itsdangerous signs the wall clock
        token = plain.sign(NEW.kid.encode() + b"." + b64url_encode(body).encode()).decode()

    assert signer().verify(token, now=NOW).reader_id == "rdr_7Hq2kXw9Lm4Pz"


# Lifetime and expiry ----------------------------------------------------------------------------


def test_a_token_is_valid_until_the_last_instant_before_exp() -> None:
    claims = signer().verify(issue(), now=NOW + DEFAULT_TTL - timedelta(microseconds=1))

    assert claims.expires_at == NOW + DEFAULT_TTL


def test_a_token_is_refused_at_exp() -> None:
    with pytest.raises(TokenExpired):
        signer().verify(issue(), now=NOW + DEFAULT_TTL)


def test_an_expired_token_is_also_an_invalid_one_for_callers_that_catch_only_that() -> None:
    with pytest.raises(TokenInvalid):
        signer().verify(issue(), now=NOW + timedelta(hours=1))


def test_the_lifetime_is_the_signers_ttl() -> None:
    short = signer(ttl=timedelta(minutes=2))
    token, expires_at = short.issue(**decision())

    assert expires_at == NOW + timedelta(minutes=2)
    short.verify(token, now=NOW + timedelta(minutes=1, seconds=59))
    with pytest.raises(TokenExpired):
        short.verify(token, now=NOW + timedelta(minutes=2))


def test_the_lifetime_is_capped_at_the_decisions_until() -> None:
    until = NOW + timedelta(minutes=4)
    token, expires_at = signer().issue(**decision(until=until))

    assert expires_at == until
    assert signer().verify(token, now=until - timedelta(seconds=1)).expires_at == until
    with pytest.raises(TokenExpired):
        signer().verify(token, now=until)


def test_a_token_never_outlives_an_until_that_falls_inside_a_second() -> None:
    until = NOW + timedelta(minutes=4, microseconds=600_000)

    _, expires_at = signer().issue(**decision(until=until))

    assert expires_at == NOW + timedelta(minutes=4)


@pytest.mark.parametrize(
    "until",
    [NOW - timedelta(days=1), NOW, NOW + timedelta(microseconds=999_999)],
    ids=["yesterday", "now", "within the second"],
)
def test_a_grant_that_ends_before_a_token_could_live_is_refused(until: datetime) -> None:
    with pytest.raises(ValueError, match="decide again"):
        signer().issue(**decision(until=until))


def test_a_token_signed_a_little_in_the_future_is_tolerated() -> None:
    token = issue(now=NOW + CLOCK_SKEW)

    assert signer().verify(token, now=NOW).issued_at == NOW + CLOCK_SKEW


def test_a_token_signed_further_in_the_future_is_invalid() -> None:
    token = issue(now=NOW + CLOCK_SKEW + timedelta(seconds=1))

    with pytest.raises(TokenInvalid, match="future") as caught:
        signer().verify(token, now=NOW)
    assert not isinstance(caught.value, TokenExpired)


def test_max_age_expires_a_token_older_than_it() -> None:
    token = issue()

    signer().verify(token, now=NOW + timedelta(minutes=5), max_age=timedelta(minutes=5))
    with pytest.raises(TokenExpired, match="older"):
        signer().verify(
            token, now=NOW + timedelta(minutes=5, seconds=1), max_age=timedelta(minutes=5)
        )


# Tampering, other keys and other clients --------------------------------------------------------


def test_a_changed_payload_character_is_invalid() -> None:
    token = issue()

    with pytest.raises(TokenInvalid):
        signer().verify(replace_at(token, 20, other_char(token[20])), now=NOW)


def test_a_rewritten_payload_under_the_old_signature_is_invalid() -> None:
    kid, payload_part, timestamp, signature = issue().split(".")
    payload = json.loads(b64url_decode(payload_part))
    payload.update(reason="complimentary", until=None)
    forged = b64url_encode(json.dumps(payload).encode())

    with pytest.raises(TokenInvalid):
        signer().verify(f"{kid}.{forged}.{timestamp}.{signature}", now=NOW)


def test_a_changed_timestamp_is_invalid() -> None:
    kid, payload_part, _, signature = issue().split(".")
    later = b64url_encode(int(NOW.timestamp() + 3600).to_bytes(4, "big"))

    with pytest.raises(TokenInvalid):
        signer().verify(f"{kid}.{payload_part}.{later}.{signature}", now=NOW)


def test_a_changed_signature_is_invalid() -> None:
    token = issue()

    with pytest.raises(TokenInvalid):
        signer().verify(replace_at(token, -5, other_char(token[-5])), now=NOW)


def test_a_signature_with_a_non_canonical_last_character_is_invalid() -> None:
    token = issue()
    # The last of 43 characters carries 2 unused bits: flipping them keeps the decoded bytes.
    twin = BASE64URL[BASE64URL.index(token[-1]) ^ 1]
    assert b64url_decode(token[-43:]) == b64url_decode(token[-43:-1] + twin)

    with pytest.raises(TokenInvalid):
        signer().verify(token[:-1] + twin, now=NOW)


def test_a_token_from_another_salt_is_invalid() -> None:
    body = b64url_encode(json.dumps(decision_payload()).encode())
    other = TimestampSigner(
        NEW.secret, salt="tollgate.verify-email.v1", digest_method=hashlib.sha256
    )
    with time_machine.travel(NOW, tick=False):
        token = other.sign(f"{NEW.kid}.{body}").decode()

    with pytest.raises(TokenInvalid):
        signer().verify(token, now=NOW)


def test_a_token_signed_with_the_sha1_default_digest_is_invalid() -> None:
    body = b64url_encode(json.dumps(decision_payload()).encode())
    with time_machine.travel(NOW, tick=False):
        token = TimestampSigner(NEW.secret, salt=SALT).sign(f"{NEW.kid}.{body}").decode()

    with pytest.raises(TokenInvalid):
        signer().verify(token, now=NOW)


def test_a_token_of_a_key_the_verifier_does_not_hold_is_invalid() -> None:
    with pytest.raises(TokenInvalid, match="does not hold"):
        signer([NEW]).verify(issue([OLD]), now=NOW)


def test_the_key_is_picked_by_kid_and_no_other_key_is_tried() -> None:
    impostor = TokenKey(kid=NEW.kid, secret=OLD.secret)  # our kid, another listed key's secret

    with pytest.raises(TokenInvalid, match="bad signature"):
        signer([NEW, OLD]).verify(issue([impostor]), now=NOW)


def test_a_token_issued_to_another_client_is_invalid_even_with_a_shared_key() -> None:
    token = issue(client_id="cli_other_site")

    with pytest.raises(TokenInvalid, match="another API client"):
        signer().verify(token, now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "nonsense",
        "a.b.c",
        "tk_NewKey01.a.b",
        "tk_NewKey01...",
        "eyJhIjoxfQ.awZFsg." + "A" * 43,
        "tk_NewKey01.eyJhIjoxfQ.awZFsg." + "A" * 44,
        "tk_NewKey01.eyJhIjoxfQ.awZFsg." + "A" * 42 + "é",
        "tk_NewKey01.eyJhIjoxfQ.awZ Fsg." + "A" * 43,
        "tk_NewKey1.eyJhIjoxfQ.awZFsg." + "A" * 43,
        "tk_NewKey01." + "x" * 5000 + ".awZFsg." + "A" * 43,
    ],
    ids=[
        "empty",
        "one part",
        "three parts",
        "short signature",
        "empty parts",
        "old form without a kid",
        "long signature",
        "non-ascii",
        "space",
        "short kid",
        "too long",
    ],
)
def test_a_malformed_token_is_invalid(token: str) -> None:
    with pytest.raises(TokenInvalid):
        signer().verify(token, now=NOW)


@pytest.mark.parametrize(
    "payload",
    [
        ["not", "an", "object"],
        "a string",
        {"reason": "trial"},
        {**decision(), "reason": None},
        {**decision(), "plan": 3},
        {**decision(), "client_id": None},
        {**decision(), "exp": "soon"},
        {**decision(), "exp": 10**20},
        {**decision(), "until": "tomorrow"},
        {**decision(), "until": "2027-01-01T00:00:00"},
    ],
    ids=[
        "list",
        "string",
        "missing fields",
        "reason null",
        "plan not string",
        "client null",
        "exp not int",
        "exp out of range",
        "until not a date",
        "until naive",
    ],
)
def test_a_genuine_token_with_a_payload_of_the_wrong_shape_is_invalid(payload: Any) -> None:
    if isinstance(payload, dict):
        payload = {key: value for key, value in payload.items() if key != "now"}
        payload.setdefault("client_id", CLIENT)
        payload.setdefault("exp", int((NOW + DEFAULT_TTL).timestamp()))
        if isinstance(payload.get("until"), datetime):
            payload["until"] = payload["until"].strftime("%Y-%m-%dT%H:%M:%SZ")
    token = sign_as_documented(payload, NEW, NOW)

    with pytest.raises(TokenInvalid, match="shape"):
        signer().verify(token, now=NOW)


def test_a_token_minted_by_the_documented_steps_verifies() -> None:
    payload = {
        "reader_id": "rdr_1",
        "reason": "complimentary",
        "plan": None,
        "group_id": None,
        "until": None,
        "client_id": CLIENT,
        "exp": int(NOW.timestamp()) + 60,
    }

    claims = signer([OLD, NEW]).verify(sign_as_documented(payload, NEW, NOW), now=NOW)

    assert (claims.reason, claims.expires_at) == ("complimentary", NOW + timedelta(seconds=60))


# Key sets ---------------------------------------------------------------------------------------


def test_the_first_key_signs_and_every_listed_key_verifies() -> None:
    token = issue([NEW, OLD])

    assert token.startswith(NEW.kid + ".")
    assert signer([OLD, NEW]).verify(token, now=NOW).kid == NEW.kid
    assert signer([NEW]).verify(token, now=NOW).kid == NEW.kid
    assert signer([NEW, OLD]).verify(issue([OLD]), now=NOW).kid == OLD.kid
    with pytest.raises(TokenInvalid):
        signer([OLD]).verify(token, now=NOW)


def test_keys_are_written_and_read_as_kid_dot_secret() -> None:
    assert TokenKey.parse(f"  {NEW}  ") == NEW
    assert str(NEW) == f"{NEW.kid}.{NEW.secret}"
    assert NEW.secret not in repr(NEW)
    assert TokenKey.parse(str(TokenKey.generate())).kid.startswith("tk_")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tk_short.x",
        "tk_NewKey01",
        f"tk_NewKey01.{'a' * 42}",
        f"xx_NewKey01.{'a' * 43}",
        f"tk_NewKey01.{'a' * 42}=",
    ],
)
def test_a_malformed_key_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="token key looks like"):
        TokenKey.parse(text)


def test_a_single_key_string_is_not_mistaken_for_a_list_of_keys() -> None:
    with pytest.raises(TypeError):
        TokenSigner(str(NEW), client_id=CLIENT)


def test_a_signer_needs_a_key_and_a_client() -> None:
    with pytest.raises(ValueError, match="key"):
        TokenSigner([], client_id=CLIENT)
    with pytest.raises(ValueError, match="client_id"):
        TokenSigner([NEW], client_id="")


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-1), timedelta(seconds=0.5)])
def test_a_signer_needs_a_ttl_of_at_least_a_second(ttl: timedelta) -> None:
    with pytest.raises(ValueError, match="ttl"):
        signer(ttl=ttl)


def test_naive_datetimes_are_refused() -> None:
    naive = NOW.replace(tzinfo=None)

    with pytest.raises(ValueError, match="now"):
        signer().issue(**decision(now=naive))
    with pytest.raises(ValueError, match="until"):
        signer().issue(**decision(until=naive + timedelta(days=1)))
    with pytest.raises(ValueError, match="now"):
        signer().verify(issue(), now=naive)


# The module-level verifier for content sites ----------------------------------------------------


def test_the_module_level_verify_checks_a_token_against_a_key_set() -> None:
    claims = tokens.verify(issue([OLD]), [str(NEW), str(OLD)], client_id=CLIENT, now=NOW)

    assert claims.reader_id == "rdr_7Hq2kXw9Lm4Pz"
    with pytest.raises(TokenExpired):
        tokens.verify(issue([OLD]), [NEW, OLD], client_id=CLIENT, now=NOW + DEFAULT_TTL)


def test_the_module_level_verify_reads_the_wall_clock_when_given_no_time() -> None:
    wall = datetime.now(UTC)
    fresh = issue(now=wall, until=None)
    stale = issue(now=wall - timedelta(hours=1), until=None)

    assert tokens.verify(fresh, [NEW], client_id=CLIENT).reader_id == "rdr_7Hq2kXw9Lm4Pz"
    with pytest.raises(TokenExpired):
        tokens.verify(stale, [NEW], client_id=CLIENT)


def test_the_module_imports_alone_with_only_the_standard_library_and_itsdangerous() -> None:
    script = (
        "import importlib.util, sys\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('tokens', {str(TOKENS_PY)!r})\n"
        "module = sys.modules['tokens'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "key = module.TokenKey.generate()\n"
        "signer = module.TokenSigner([key], client_id='cli_x')\n"
        "import datetime\n"
        "now = datetime.datetime.now(datetime.UTC)\n"
        "token, _ = signer.issue(reader_id=None, reason='trial', plan=None, group_id=None,"
        " until=None, now=now)\n"
        "assert signer.verify(token, now=now).kid == key.kid\n"
        "new = {name.split('.')[0] for name in set(sys.modules) - before}\n"
        "print(sorted(name for name in new if name not in sys.stdlib_module_names))\n"
    )

    result = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "['itsdangerous', 'tokens']"


# The documented format, checked with the standard library alone ---------------------------------

_DOCUMENTED_SHAPE = re.compile(
    r"tk_[A-Za-z0-9_-]{8}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]"
)


def b64url_decode(text: str) -> bytes:
    """Unpadded base64url, as the README describes it."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, as the README describes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def documented_key(secret: str) -> bytes:
    """The HMAC key of a token key's secret, as the README describes it."""
    return hashlib.sha256(b"tollgate.access-token.v2" + b"signer" + secret.encode("ascii")).digest()


def verify_as_documented(
    token: str, keys: list[TokenKey], client_id: str, now: datetime
) -> dict[str, Any]:
    """The README's five steps, with hmac, hashlib, base64, json and re only."""
    if len(token) > 4096 or not _DOCUMENTED_SHAPE.fullmatch(token):  # step 1
        raise ValueError("malformed")
    kid = token[:11]  # step 2
    secrets = {key.kid: key.secret for key in keys}
    if kid not in secrets:
        raise ValueError("unknown key")
    signed, _, signature = token.rpartition(".")  # step 3
    mac = hmac.new(documented_key(secrets[kid]), signed.encode("ascii"), hashlib.sha256)
    if not hmac.compare_digest(b64url_encode(mac.digest()), signature):
        raise ValueError("bad signature")
    _, payload_part, timestamp_part = signed.split(".")
    signed_at = int.from_bytes(b64url_decode(timestamp_part), "big")  # step 4
    if signed_at > now.timestamp() + 60:
        raise ValueError("signed in the future")
    payload: dict[str, Any] = json.loads(b64url_decode(payload_part).decode("utf-8"))  # step 5
    if payload["client_id"] != client_id:
        raise ValueError("another client")
    if now.timestamp() >= payload["exp"]:
        raise ValueError("expired")
    return payload


def sign_as_documented(payload: Any, key: TokenKey, signed_at: datetime) -> str:
    """The inverse of :func:`verify_as_documented`: a token minted from the README's format."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    seconds = int(signed_at.timestamp())
    timestamp = seconds.to_bytes((seconds.bit_length() + 7) // 8, "big")
    signed = f"{key.kid}.{b64url_encode(body)}.{b64url_encode(timestamp)}"
    mac = hmac.new(documented_key(key.secret), signed.encode("ascii"), hashlib.sha256).digest()
    return signed + "." + b64url_encode(mac)


def test_the_documented_format_verifies_real_tokens_with_the_standard_library_alone() -> None:
    until = NOW + timedelta(minutes=7)
    token = issue([OLD], group_id="Ministère", until=until)

    payload = verify_as_documented(token, [NEW, OLD], CLIENT, NOW)

    assert payload == {
        "reader_id": "rdr_7Hq2kXw9Lm4Pz",
        "reason": "subscription",
        "plan": "individual-monthly",
        "group_id": "Ministère",
        "until": "2026-11-25T09:37:00Z",
        "client_id": CLIENT,
        "exp": int(until.timestamp()),
    }
    assert len(token.split(".")[2]) == 6
    assert len(token.split(".")[3]) == 43


def test_the_documented_format_rejects_what_the_module_rejects() -> None:
    token = issue()
    twin = BASE64URL[BASE64URL.index(token[-1]) ^ 1]

    for bad in (replace_at(token, 20, other_char(token[20])), token[:-1] + twin):
        with pytest.raises(ValueError, match=r"signature|malformed"):
            verify_as_documented(bad, [NEW], CLIENT, NOW)
    with pytest.raises(ValueError, match="unknown key"):
        verify_as_documented(token, [OLD], CLIENT, NOW)
    with pytest.raises(ValueError, match="another client"):
        verify_as_documented(token, [NEW], "cli_other", NOW)
    with pytest.raises(ValueError, match="expired"):
        verify_as_documented(token, [NEW], CLIENT, NOW + DEFAULT_TTL)
    with pytest.raises(ValueError, match="future"):
        verify_as_documented(issue(now=NOW + timedelta(seconds=61)), [NEW], CLIENT, NOW)


# The README's worked examples -------------------------------------------------------------------


def readme_examples() -> tuple[list[TokenKey], list[str], list[dict[str, Any]], str]:
    """The key set, the two tokens, their payloads and the format section of the README."""
    text = README.read_text()
    section = text[text.index("### Token format") : text.index("### Revocation and speed")]
    keys = [TokenKey.parse(k) for k in re.findall(r"^(tk_[\w-]{8}\.[\w-]{43})$", section, re.M)]
    found = re.findall(r"^(tk_[\w-]{8}\.[\w-]+\.[\w-]+\.[\w-]{43})$", section, re.M)
    payloads = [json.loads(p) for p in re.findall(r"```json\n(\{.*\})\n```", section)]
    return keys, found, payloads, section


def test_the_readme_shows_a_key_set_and_two_worked_examples() -> None:
    keys, found, payloads, _ = readme_examples()

    assert [key.kid for key in keys] == ["tk_ReadMe02", "tk_ReadMe01"]
    assert [token[:11] for token in found] == ["tk_ReadMe02", "tk_ReadMe01"]
    assert len(payloads) == 2


def test_the_readmes_first_example_verifies_with_every_value_it_states() -> None:
    keys, found, payloads, section = readme_examples()
    token, payload = found[0], payloads[0]
    at = datetime(2026, 11, 25, 9, 14, 59, tzinfo=UTC)
    verifier = TokenSigner(keys, client_id="cli_demo-newspaper")

    claims = verifier.verify(token, now=at)

    assert (claims.kid, claims.reader_id, claims.reason) == (
        "tk_ReadMe02",
        payload["reader_id"],
        "trial",
    )
    assert json.loads(b64url_decode(token.split(".")[1])) == payload
    assert verify_as_documented(token, keys, "cli_demo-newspaper", at) == payload
    assert claims.issued_at == datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    assert b64url_decode(token.split(".")[2]).hex(" ") in section
    key_hex = documented_key(keys[0].secret).hex()
    assert f"`{key_hex}`" in section
    mac = hmac.new(bytes.fromhex(key_hex), token.rpartition(".")[0].encode(), hashlib.sha256)
    assert f"`{mac.hexdigest()}`" in section
    assert f"SIGNATURE `{token.rpartition('.')[2]}`" in section
    with pytest.raises(TokenExpired):
        verifier.verify(token, now=datetime(2026, 11, 25, 9, 15, tzinfo=UTC))


def test_the_readmes_second_example_is_signed_by_the_older_key_and_verifies_until_exp() -> None:
    keys, found, payloads, _ = readme_examples()
    token, payload = found[1], payloads[1]
    at = datetime(2026, 11, 25, 9, 5, tzinfo=UTC)

    claims = TokenSigner(keys, client_id="cli_demo-newspaper").verify(token, now=at)

    assert (claims.kid, claims.reader_id, claims.group_id) == ("tk_ReadMe01", None, "grp_8fKq2LmZ")
    assert verify_as_documented(token, keys, "cli_demo-newspaper", at) == payload
    with pytest.raises(TokenExpired):
        TokenSigner(keys, client_id="cli_demo-newspaper").verify(
            token, now=datetime(2026, 11, 25, 9, 7, 30, tzinfo=UTC)
        )
    with pytest.raises(TokenInvalid, match="does not hold"):
        TokenSigner(keys[:1], client_id="cli_demo-newspaper").verify(token, now=at)
    with pytest.raises(TokenInvalid, match="another API client"):
        TokenSigner(keys, client_id="cli_someone-else").verify(token, now=at)


# Properties -------------------------------------------------------------------------------------

moments = st.datetimes(
    min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
)
optional_text = st.none() | st.text(max_size=40)


@given(
    reader_id=optional_text,
    reason=st.text(max_size=40),
    plan=optional_text,
    group_id=optional_text,
    now=moments,
    lasts=st.none()
    | st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=800)),
    ttl_seconds=st.integers(min_value=1, max_value=86_400),
)
def test_any_grant_round_trips(
    reader_id: str | None,
    reason: str,
    plan: str | None,
    group_id: str | None,
    now: datetime,
    lasts: timedelta | None,
    ttl_seconds: int,
) -> None:
    keyed = signer([NEW, OLD], ttl=timedelta(seconds=ttl_seconds))
    until = None if lasts is None else now + lasts
    issue_it = functools.partial(
        keyed.issue,
        reader_id=reader_id,
        reason=reason,
        plan=plan,
        group_id=group_id,
        until=until,
        now=now,
    )
    if until is not None and int(until.timestamp()) <= now.timestamp():
        with pytest.raises(ValueError, match="decide again"):
            issue_it()
        return
    token, expires_at = issue_it()

    claims = keyed.verify(token, now=now)

    assert (claims.reader_id, claims.reason) == (reader_id, reason)
    assert (claims.plan, claims.group_id, claims.client_id) == (plan, group_id, CLIENT)
    assert claims.until == (None if until is None else until.replace(microsecond=0))
    assert claims.issued_at == now.replace(microsecond=0)
    assert claims.expires_at == expires_at
    assert expires_at <= now + timedelta(seconds=ttl_seconds)
    if until is not None:
        assert expires_at <= until
    assert verify_as_documented(token, [OLD, NEW], CLIENT, now)["reason"] == reason


@given(
    index=st.integers(min_value=0),
    replacement=st.sampled_from(BASE64URL + ".=+/ é"),
    now=moments,
)
def test_any_single_character_change_makes_a_token_invalid(
    index: int, replacement: str, now: datetime
) -> None:
    keyed = signer([NEW, OLD])
    token, _ = keyed.issue(**decision(now=now, until=None))
    index %= len(token)
    if token[index] == replacement:
        replacement = other_char(replacement)

    changed = replace_at(token, index, replacement)

    with pytest.raises(TokenInvalid):
        keyed.verify(changed, now=now)
    with pytest.raises(ValueError, match=r"signature|malformed|unknown key"):
        verify_as_documented(changed, [NEW, OLD], CLIENT, now)
