"""Reader accounts: e-mail normalisation, sign-up, log-in, verification, password and e-mail changes.

Links sent by mail are itsdangerous tokens with a purpose salt and a timestamp checked against the
app's clock. They stay valid only while what they were issued for is unchanged: a verification
link names the address, a reset link carries a fingerprint of the password hash (so resetting, or
any password change, kills every older link), an e-mail change link names the new address.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from email_validator import EmailNotValidError, validate_email
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from billing.errors import Conflict, DomainError, ValidationFailed
from billing.models import Reader
from billing.models.readers import new_session_token

PASSWORD_MIN_LENGTH = 10
PASSWORD_MAX_LENGTH = 256
PASSWORD_MIN_STRENGTH = 3
"""zxcvbn's score (0-4) a new password needs: 3 is "safely unguessable" for online attacks."""
PASSWORD_STRENGTH_CHECKED = 100
"""Only this many characters are given to zxcvbn (its time grows with the length)."""
GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
# A hash of a random password, so unknown e-mails cost the same time as wrong passwords.


@functools.cache
def _dummy_hash() -> str:
    """A hash to check unknown e-mails' passwords against, so they take as long as known ones;
    made on the first login, not at import (scrypt takes 32 MB while it runs, which every process
    building the app, the export command too, would otherwise pay for)."""
    return generate_password_hash("tollgate-timing-equaliser")


class InvalidLink(DomainError):
    """A mailed link that is forged, expired, already used or issued for something that changed."""

    code = "invalid_link"


def normalise_email(raw: str, field: str = "email") -> str:
    """The login form of an address: trimmed, lower-cased, syntax-checked (no DNS look-up)."""
    value = (raw or "").strip().lower()
    if not value:
        raise ValidationFailed("Enter your e-mail address.", field=field)
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValidationFailed(_email_problem(value), field=field) from exc
    return checked.normalized.lower()


def _email_problem(value: str) -> str:
    """What is wrong with an address the validator refused, in our words (not the library's)."""
    example = "like name@example.org"
    if "@" not in value:
        return f"An e-mail address needs an @ sign, {example}."
    local, _, domain = value.rpartition("@")
    if not local:
        return f"Put your name before the @ sign, {example}."
    if "." not in domain:
        return f"The part after the @ sign needs a domain such as example.org, {example}."
    return f"This e-mail address cannot be right: check it for typos ({example})."


def canonical_email(normalised: str) -> str:
    """The person behind an address: plus-tags dropped, and dots too for Gmail (one trial each)."""
    local, _, domain = normalised.rpartition("@")
    local = local.split("+", 1)[0]
    if domain in GMAIL_DOMAINS:
        local = local.replace(".", "")
        domain = "gmail.com"
    return f"{local}@{domain}"


def check_password(password: str, *, email: str = "", field: str = "password") -> None:
    """Refuse passwords that are too short, too long, the e-mail address itself, or easy to guess
    (common passwords, keyboard walks, dates, the address: zxcvbn scores them below 3)."""
    if len(password) < PASSWORD_MIN_LENGTH:
        raise ValidationFailed(
            f"Use at least {PASSWORD_MIN_LENGTH} characters for your password.", field=field
        )
    if len(password) > PASSWORD_MAX_LENGTH:
        raise ValidationFailed(
            f"Use at most {PASSWORD_MAX_LENGTH} characters for your password.", field=field
        )
    if email and password.strip().lower() == email:
        raise ValidationFailed("Your password must not be your e-mail address.", field=field)
    from zxcvbn import zxcvbn  # its dictionaries take 12 MB: loaded by the first password set

    strength = zxcvbn(password[:PASSWORD_STRENGTH_CHECKED], user_inputs=[email, *email.split("@")])
    if strength["score"] < PASSWORD_MIN_STRENGTH:
        warning = str(strength["feedback"].get("warning") or "").strip()
        why = f" ({warning[:1].lower()}{warning[1:].rstrip('.')})" if warning else ""
        raise ValidationFailed(
            f"This password is too easy to guess{why}. Use a longer one, for example a few "
            "unrelated words.",
            field=field,
        )


def hash_password(password: str) -> str:
    """A salted hash of ``password`` with werkzeug's current default (scrypt)."""
    return generate_password_hash(password)


@dataclass(frozen=True)
class SignupResult:
    """What sign-up did: a new reader, or ``None`` when the address already had an account."""

    reader: Reader | None
    existing: Reader | None


def signup(
    session: Session, *, email: str, password: str, name: str, country: str, now: datetime
) -> SignupResult:
    """Create an unverified reader, or report the existing one (callers answer both the same way).

    Inputs are validated here as well as in the form, so every caller gets the same rules.
    """
    normalised = normalise_email(email)
    check_password(password, email=normalised)
    name = (name or "").strip()
    if not name:
        raise ValidationFailed("Enter your name.", field="name")
    country = (country or "").strip().upper()
    if len(country) != 2 or not country.isalpha():
        raise ValidationFailed("Choose your country.", field="country")
    # Hash before looking: a taken address must cost the same time as a new one.
    password_hash = hash_password(password)
    existing = find_by_email(session, normalised)
    if existing is not None:
        return SignupResult(reader=None, existing=existing)
    reader = Reader(
        email=normalised,
        email_canonical=canonical_email(normalised),
        name=name[:200],
        country=country,
        password_hash=password_hash,
        created_at=now,
    )
    session.add(reader)
    session.flush()
    return SignupResult(reader=reader, existing=None)


def find_by_email(session: Session, email: str) -> Reader | None:
    """The reader whose login address is ``email`` (already normalised), if any."""
    return session.scalar(select(Reader).where(Reader.email == email))


def by_public_id(session: Session, public_id: str) -> Reader | None:
    """The reader with this public id, if any."""
    return session.scalar(select(Reader).where(Reader.public_id == public_id))


def by_session_token(session: Session, token: str) -> Reader | None:
    """The reader a login session belongs to; ``None`` once the token was rotated."""
    return session.scalar(select(Reader).where(Reader.session_token == token))


def authenticate(session: Session, email: str, password: str) -> Reader | None:
    """The reader with these credentials, or ``None``; takes as long whether the e-mail exists or not."""
    try:
        normalised = normalise_email(email)
    except ValidationFailed:
        normalised = ""
    dummy = _dummy_hash()
    reader = find_by_email(session, normalised) if normalised else None
    if reader is None:
        check_password_hash(dummy, password)
        return None
    if not check_password_hash(reader.password_hash, password):
        return None
    return reader


def change_password(reader: Reader, *, current: str | None, new: str) -> None:
    """Set a new password (after checking the current one, unless ``current`` is None for a reset).

    Rotates the session token, so every other logged-in session ends.
    """
    if current is not None and not check_password_hash(reader.password_hash, current):
        raise ValidationFailed("Your current password is not correct.", field="current_password")
    check_password(
        new, email=reader.email, field="new_password" if current is not None else "password"
    )
    reader.password_hash = hash_password(new)
    reader.session_token = new_session_token()


def end_all_sessions(reader: Reader) -> None:
    """Log the reader out everywhere by rotating their session token."""
    reader.session_token = new_session_token()


# Mailed links --------------------------------------------------------------------------------

VERIFY_SALT = "tollgate.verify-email.v1"
RESET_SALT = "tollgate.password-reset.v1"
CHANGE_EMAIL_SALT = "tollgate.change-email.v1"


def _serializer(secret_keys: Sequence[str], salt: str) -> URLSafeTimedSerializer:
    # itsdangerous signs with the last key of the list; ours signs with the first.
    return URLSafeTimedSerializer(list(reversed(secret_keys)), salt=salt)


def dumps(secret_keys: Sequence[str], salt: str, payload: dict[str, Any], now: datetime) -> str:
    """Sign ``payload`` for a link with ``salt`` as if at ``now`` (the first key signs)."""
    serializer = _serializer(secret_keys, salt)
    signer = serializer.make_signer(salt)
    signer.get_timestamp = lambda: int(now.timestamp())  # type: ignore[attr-defined]
    return signer.sign(serializer.dump_payload(payload)).decode()


def loads(
    secret_keys: Sequence[str], salt: str, token: str, now: datetime, max_age: int
) -> dict[str, Any]:
    """The payload of a link signed with ``salt`` by any of ``secret_keys``, at most ``max_age``
    seconds old at ``now``; InvalidLink otherwise."""
    serializer = _serializer(secret_keys, salt)
    try:
        payload, signed_at = serializer.loads(token, return_timestamp=True)
    except BadSignature as exc:
        raise InvalidLink("This link is not valid. Ask for a new one.") from exc
    age = (now - signed_at.replace(tzinfo=UTC)).total_seconds()
    if age > max_age or age < -60:
        raise InvalidLink("This link has expired. Ask for a new one.")
    if not isinstance(payload, dict):
        raise InvalidLink("This link is not valid. Ask for a new one.")
    return payload


def _password_fingerprint(reader: Reader) -> str:
    return hashlib.sha256(reader.password_hash.encode()).hexdigest()[:16]


def verification_token(secret_keys: Sequence[str], reader: Reader, now: datetime) -> str:
    """A link token proving the reader received mail at their current address."""
    return dumps(secret_keys, VERIFY_SALT, {"r": reader.public_id, "e": reader.email}, now)


def verify_email(
    session: Session, secret_keys: Sequence[str], token: str, *, now: datetime, max_age: int
) -> Reader:
    """Mark the reader's address verified from a link token; idempotent for the same link."""
    payload = loads(secret_keys, VERIFY_SALT, token, now, max_age)
    reader = by_public_id(session, str(payload.get("r", "")))
    if reader is None or reader.email != payload.get("e"):
        raise InvalidLink("This link is not valid any more. Ask for a new one.")
    if reader.email_verified_at is None:
        reader.email_verified_at = now
    return reader


def reset_token(secret_keys: Sequence[str], reader: Reader, now: datetime) -> str:
    """A single-use link token for setting a new password."""
    payload = {"r": reader.public_id, "h": _password_fingerprint(reader)}
    return dumps(secret_keys, RESET_SALT, payload, now)


def reader_for_reset(
    session: Session, secret_keys: Sequence[str], token: str, *, now: datetime, max_age: int
) -> Reader:
    """The reader a reset link is for, while the password it was issued against is unchanged."""
    payload = loads(secret_keys, RESET_SALT, token, now, max_age)
    reader = by_public_id(session, str(payload.get("r", "")))
    fingerprint = str(payload.get("h", ""))
    if reader is None or not hmac.compare_digest(fingerprint, _password_fingerprint(reader)):
        raise InvalidLink("This link was already used or is no longer valid. Ask for a new one.")
    return reader


def reset_password(
    session: Session,
    secret_keys: Sequence[str],
    token: str,
    new_password: str,
    *,
    now: datetime,
    max_age: int,
) -> Reader:
    """Set a new password from a reset link; the link and all older ones stop working.

    Following a reset link also proves the reader receives mail there, so it verifies the address.
    """
    reader = reader_for_reset(session, secret_keys, token, now=now, max_age=max_age)
    change_password(reader, current=None, new=new_password)
    if reader.email_verified_at is None:
        reader.email_verified_at = now
    return reader


def change_email_token(
    secret_keys: Sequence[str], reader: Reader, new_email: str, now: datetime
) -> str:
    """A link token, mailed to ``new_email``, that moves the account to that address."""
    payload = {"r": reader.public_id, "old": reader.email, "new": new_email}
    return dumps(secret_keys, CHANGE_EMAIL_SALT, payload, now)


def request_email_change(reader: Reader, *, password: str, new_email: str) -> str:
    """Check the password and the new address; return the normalised address to confirm."""
    if not check_password_hash(reader.password_hash, password):
        raise ValidationFailed("Your password is not correct.", field="password")
    normalised = normalise_email(new_email, field="new_email")
    if normalised == reader.email:
        raise ValidationFailed("This is already your e-mail address.", field="new_email")
    return normalised


def confirm_email_change(
    session: Session, secret_keys: Sequence[str], token: str, *, now: datetime, max_age: int
) -> Reader:
    """Move the account to the address the link was sent to; that address is then verified."""
    payload = loads(secret_keys, CHANGE_EMAIL_SALT, token, now, max_age)
    reader = by_public_id(session, str(payload.get("r", "")))
    if reader is None or reader.email != payload.get("old"):
        raise InvalidLink("This link was already used or is no longer valid.")
    new_email = str(payload.get("new", ""))
    if find_by_email(session, new_email) is not None:
        raise Conflict("Another account already uses this address.", field="new_email")
    reader.email = new_email
    reader.email_canonical = canonical_email(new_email)
    reader.email_verified_at = now
    return reader
