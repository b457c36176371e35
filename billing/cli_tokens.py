"""``flask billing api-client ...`` commands for token keys, and the demo newspaper's token key.

Registered on the ``api-client`` group of :mod:`billing.cli` when the CLI is set up.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import click
from sqlalchemy.orm import Session

from billing import db
from billing.cli import api_client_cli
from billing.clock import current_clock
from billing.errors import DomainError
from billing.models import ApiClient, TokenKey
from billing.services import audit, token_keys, tokens

DEMO_NEWSPAPER_TOKEN_KEY = "tk_newsdemo.demo-newspaper-token-key-local-use-only-000"  # noqa: S105
"""The demo newspaper's well-known token key (created by ``seed-demo`` in development only)."""

_DURATION = re.compile(r"(\d{1,7})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType[timedelta]):
    """A duration written ``0``, ``90s``, ``15m``, ``1h`` or ``7d``."""

    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        """The duration ``value`` stands for."""
        if isinstance(value, timedelta):
            return value
        match = _DURATION.fullmatch(str(value).strip())
        if match is None:
            self.fail(f"{value!r} is not a duration such as 0, 90s, 15m, 1h or 7d", param, ctx)
        return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def ensure_demo_token_key(client: ApiClient, now: datetime) -> str:
    """Give the demo newspaper's client its well-known token key once; say which key it has."""
    session = db.session()
    demo = tokens.TokenKey.parse(DEMO_NEWSPAPER_TOKEN_KEY)
    keys = token_keys.keys_of(session, client.id)
    if not keys:
        session.add(
            TokenKey(
                kid=demo.kid,
                api_client_id=client.id,
                wrapped_secret=token_keys.current_wrapper().wrap(demo),
                created_at=now,
                signs_from=now,
            )
        )
        return DEMO_NEWSPAPER_TOKEN_KEY
    signing = token_keys.signing_key(keys, now)
    return DEMO_NEWSPAPER_TOKEN_KEY if signing and signing.kid == demo.kid else "rotated since"


def _client(session: Session, client_id: str) -> ApiClient:
    from billing.services import api_clients

    try:
        return api_clients.by_public_id(session, client_id)
    except DomainError as exc:
        raise click.BadParameter(exc.message, param_hint="CLIENT_ID") from exc


@api_client_cli.command("token-keys")
@click.argument("client_id")
def token_keys_list(client_id: str) -> None:
    """List CLIENT_ID's token keys, newest first, with their state and times."""
    session = db.session()
    client = _client(session, client_id)
    keys = token_keys.keys_of(session, client.id)
    now = current_clock().now()
    if not keys:
        click.echo(f"{client.public_id} has no token keys.")
    for key in keys:
        ends = key.revoked_at or key.retires_at
        click.echo(
            f"{key.kid}  {token_keys.state(key, keys, now).value}  "
            f"created={key.created_at:%Y-%m-%d %H:%M}  signs_from={key.signs_from:%Y-%m-%d %H:%M}  "
            f"until={f'{ends:%Y-%m-%d %H:%M}' if ends else '-'}"
        )


@api_client_cli.command("rotate-token-key")
@click.argument("client_id")
@click.option(
    "--signs-in",
    type=Duration(),
    default="0",
    show_default=True,
    help="When the new key starts signing (give the site the key before then), e.g. 1h.",
)
@click.option(
    "--retire-after",
    type=Duration(),
    default="1h",
    show_default=True,
    help="How long after that the earlier keys stop verifying, e.g. 15m, 1d.",
)
def token_key_rotate(client_id: str, signs_in: timedelta, retire_after: timedelta) -> None:
    """Add a token key to CLIENT_ID and print it (shown this once only)."""
    session = db.session()
    client = _client(session, client_id)
    now = current_clock().now()
    try:
        key = token_keys.rotate(
            session,
            client,
            wrapper=token_keys.current_wrapper(),
            now=now,
            signs_in=signs_in,
            retire_after=retire_after,
        )
    except DomainError as exc:
        hint = {"signs_in": "--signs-in", "retire_after": "--retire-after"}.get(exc.field or "")
        raise click.BadParameter(exc.message, param_hint=hint or "CLIENT_ID") from exc
    audit.record(
        session,
        now=now,
        actor="cli",
        action="api_client.token_key_rotated",
        target=client,
        details={
            "kid": key.kid,
            "signs_in_seconds": int(signs_in.total_seconds()),
            "retire_after_seconds": int(retire_after.total_seconds()),
        },
    )
    session.commit()
    starts = now + signs_in
    click.echo(
        f"New token key for {client.public_id} ({client.name}), signing from {starts:%Y-%m-%d %H:%M} UTC."
    )
    click.echo(f"Earlier keys stop verifying at {starts + retire_after:%Y-%m-%d %H:%M} UTC.")
    click.echo(f"Token key (shown once, give it to the site now): {key}")


@api_client_cli.command("revoke-token-key")
@click.argument("kid")
def token_key_revoke(kid: str) -> None:
    """Revoke the token key KID at once: Tollgate no longer signs or accepts it."""
    session = db.session()
    now = current_clock().now()
    try:
        key = token_keys.by_kid(session, kid)
        token_keys.revoke(key, now=now)
    except DomainError as exc:
        raise click.BadParameter(exc.message, param_hint="KID") from exc
    client = session.get(ApiClient, key.api_client_id)
    audit.record(
        session,
        now=now,
        actor="cli",
        action="api_client.token_key_revoked",
        target=client,
        details={"kid": kid},
    )
    session.commit()
    click.echo(f"Revoked token key {kid}; the site should drop it from its list too.")


@api_client_cli.command("rewrap-token-keys")
def token_keys_rewrap() -> None:
    """Re-encrypt every stored token key with the first TOKEN_KEY_WRAPPING_SECRETS secret."""
    session = db.session()
    count = token_keys.rewrap_all(session, token_keys.current_wrapper())
    session.commit()
    click.echo(f"Re-wrapped {count} token key(s); older wrapping secrets can now be removed.")
