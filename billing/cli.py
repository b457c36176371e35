"""Command-line tools: ``flask db ...`` for the schema and ``flask billing ...`` for operations."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from billing import db, demo_reader
from billing.clock import Clock, FixedClock, as_utc, current_clock
from billing.errors import DomainError
from billing.models import ApiClient, BillingInterval, Plan, PlanKind, Reader, StaffRole, Trial
from billing.services import accounts, audit, decision_cache, mail, trials

db_cli = AppGroup("db", help="Database schema (Alembic migrations).")
billing_cli = AppGroup("billing", help="Tollgate operations.")

DEMO_PLANS = (
    ("individual-monthly", "Monthly", PlanKind.INDIVIDUAL, BillingInterval.MONTH, 1200),
    ("individual-yearly", "Yearly", PlanKind.INDIVIDUAL, BillingInterval.YEAR, 12000),
    ("group-seat-yearly", "Group seat, yearly", PlanKind.GROUP, BillingInterval.YEAR, 9600),
)
DEMO_STAFF_EMAIL = "staff@example.org"
DEMO_STAFF_PASSWORD = "tollgate-demo-staff"  # noqa: S105 - printed for the local demo only
DEMO_READER_PASSWORD = "tollgate-demo"  # noqa: S105
DEMO_FINANCE_EMAIL = "finance@example.org"
DEMO_SUPPORT_EMAIL = "support@example.org"
DEMO_NEWSPAPER_CLIENT_ID = "cli_demo-newspaper"
DEMO_NEWSPAPER_KEY = "tg_newsdemo.demo-newspaper-key-for-local-use-only-00000"
DEMO_NEWSPAPER_ORIGIN = "http://127.0.0.1:5001"
"""The demo newspaper (``examples/newspaper``) uses this client and key by default."""


def init_app(app: Flask) -> None:
    """Register the command groups on ``app``."""
    app.cli.add_command(db_cli)
    app.cli.add_command(billing_cli)
    from billing import cli_tokens  # noqa: F401 - registers the token-key commands


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Run migrations up to REVISION (default: the newest)."""
    db.upgrade(current_app.config["DATABASE_URL"], revision)
    click.echo(f"Database at {revision}.")


@db_cli.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Undo migrations down to REVISION (``base`` empties the schema)."""
    db.downgrade(current_app.config["DATABASE_URL"], revision)
    click.echo(f"Database at {revision}.")


def _parse_now(value: str | None) -> Clock:
    if value is None:
        return current_clock()
    try:
        return FixedClock(as_utc(datetime.fromisoformat(value)))
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO-8601 time: {value!r}", param_hint="--now") from exc


@billing_cli.command("create-staff")
@click.option("--email", required=True, help="The staff member's e-mail address.")
@click.option(
    "--role",
    required=True,
    type=click.Choice([r.value for r in StaffRole if r != StaffRole.NONE]),
    help="support, finance or admin.",
)
@click.option("--name", default="", help="Display name (for a new account).")
@click.option(
    "--password", default=None, help="Password for a new account (asked for when needed)."
)
def create_staff(email: str, role: str, name: str, password: str | None) -> None:
    """Give EMAIL a staff role, creating a verified account when there is none."""
    session = db.session()
    now = current_clock().now()
    try:
        normalised = accounts.normalise_email(email)
        reader = accounts.find_by_email(session, normalised)
        created = reader is None
        if reader is None:
            if password is None:
                password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
            result = accounts.signup(
                session,
                email=normalised,
                password=password,
                name=name or normalised.split("@")[0],
                country="BE",
                now=now,
            )
            assert result.reader is not None
            reader = result.reader
            reader.email_verified_at = now
    except DomainError as exc:
        raise click.BadParameter(exc.message, param_hint=f"--{exc.field or 'email'}") from exc
    reader.staff_role = StaffRole(role)
    audit.record(
        session,
        now=now,
        actor="cli",
        action="staff.role_set",
        target=reader,
        details={"role": role},
    )
    session.commit()
    click.echo(f"{'Created' if created else 'Updated'} {reader.email} with role {role}.")


def _ensure_reader(
    email: str, name: str, *, now: datetime, password: str = DEMO_READER_PASSWORD
) -> tuple[Reader, bool]:
    session = db.session()
    existing = accounts.find_by_email(session, email)
    if existing is not None:
        return existing, False
    result = accounts.signup(
        session, email=email, password=password, name=name, country="BE", now=now
    )
    assert result.reader is not None
    result.reader.email_verified_at = now
    return result.reader, True


def _demo_newspaper_key_hash() -> str:
    """The stored hash of the demo newspaper's well-known key."""
    from billing.services.api_clients import hash_key

    return hash_key(DEMO_NEWSPAPER_KEY)


def _ensure_demo_newspaper(now: datetime) -> ApiClient:
    """The demo newspaper's API client, with its well-known key (development only)."""
    from billing.services.api_clients import SCOPE_ENTITLEMENTS_READ

    session = db.session()
    client = session.scalar(
        select(ApiClient).where(ApiClient.public_id == DEMO_NEWSPAPER_CLIENT_ID)
    )
    if client is None:
        client = ApiClient(
            public_id=DEMO_NEWSPAPER_CLIENT_ID,
            name="Demo newspaper (examples/newspaper)",
            key_prefix=DEMO_NEWSPAPER_KEY.split(".")[0],
            key_hash=_demo_newspaper_key_hash(),
            scopes=[SCOPE_ENTITLEMENTS_READ],
            allowed_origins=[DEMO_NEWSPAPER_ORIGIN],
            created_at=now,
        )
        session.add(client)
    return client


@billing_cli.command("seed-demo")
def seed_demo() -> None:
    """Create demo plans, staff admin, readers and the demo newspaper's API client (idempotent).

    The newspaper's client has a well-known key, so it is created in development only.
    """
    session = db.session()
    now = current_clock().now()
    days = current_app.config["TRIAL_DAYS"]
    for code, name, kind, interval, amount in DEMO_PLANS:
        if session.scalar(select(Plan).where(Plan.code == code)) is None:
            session.add(
                Plan(
                    code=code,
                    name=name,
                    kind=kind,
                    interval=interval,
                    amount=amount,
                    currency="eur",
                )
            )
    staff, _ = _ensure_reader(DEMO_STAFF_EMAIL, "Demo Staff", now=now, password=DEMO_STAFF_PASSWORD)
    staff.staff_role = StaffRole.ADMIN
    demo_trials = {
        "trial.active@example.org": ("Active Trial", now - timedelta(days=2)),
        "trial.ending@example.org": ("Ending Trial", now - timedelta(days=days - 2)),
        "trial.expired@example.org": ("Expired Trial", now - timedelta(days=days + 5)),
        "no.trial@example.org": ("No Trial Yet", None),
    }
    for email, (name, started) in demo_trials.items():
        reader, created = _ensure_reader(email, name, now=now)
        if created and started is not None:
            session.flush()
            trials.start_trial(session, reader, now=started, days=days)
    soon = demo_reader.seed_trial_ending_soon(session, _ensure_reader, now=now, days=days)
    newspaper = _ensure_demo_newspaper(now) if current_app.config["DEV_MODE"] else None
    token_key = None
    if newspaper is not None:
        from billing.cli_tokens import ensure_demo_token_key

        session.flush()
        token_key = ensure_demo_token_key(newspaper, now)
    history = _seed_finance_demo(now)
    session.commit()
    if current_app.config["DEV_MODE"]:
        _seed_demo_group(now)
    click.echo("Demo data ready.")
    click.echo(f"  Staff login: {DEMO_STAFF_EMAIL} / {DEMO_STAFF_PASSWORD}")
    click.echo(f"  Demo readers (password {DEMO_READER_PASSWORD}): " + ", ".join(demo_trials))
    click.echo(
        f"  {soon.email}'s trial ends two minutes from now: then run `billing tick` to see it end"
    )
    click.echo(
        f"  Finance login: {DEMO_FINANCE_EMAIL} / {DEMO_STAFF_PASSWORD}; support login: "
        f"{DEMO_SUPPORT_EMAIL} / {DEMO_STAFF_PASSWORD}"
    )
    if history:
        click.echo(f"  A year of demo history (mirror only, ids demo_*): {history} readers.")
    if newspaper is not None:
        known = newspaper.key_hash == _demo_newspaper_key_hash()
        key = DEMO_NEWSPAPER_KEY if known else "rotated since"
        state = f"revoked {newspaper.revoked_at:%Y-%m-%d}" if newspaper.revoked_at else "active"
        click.echo(
            f"  Demo newspaper API client: {newspaper.public_id}, key {key}, "
            f"origins {', '.join(newspaper.allowed_origins)} ({state})"
        )
        click.echo(f"  Demo newspaper token key: {token_key}")


DEMO_GROUP_ADMIN = "group.admin@ministry.example"
DEMO_GROUP_NETWORK = "203.0.113.0/24"
"""A documentation range (RFC 5737): staff-approved as a private range for the demo."""


def _seed_demo_group(now: datetime) -> None:
    """Development: an organisation paying by invoice, with an approved domain and an office
    network covering the documentation address 203.0.113.10 (the newspaper can browse from it)."""
    from billing.gateway import GatewayError
    from billing.models import Group
    from billing.services import groups, payments

    session = db.session()
    if session.scalar(select(Group).where(Group.name == "Example Ministry")) is not None:
        return
    gateway = current_app.extensions["stripe_gateway"]
    rules = groups.GroupRules.from_config(current_app.config)
    try:
        payments.sync_plans(session, gateway)
        admin, _ = _ensure_reader(DEMO_GROUP_ADMIN, "Group Admin", now=now)
        session.flush()
        group = groups.create_group(
            session,
            gateway,
            admin,
            name="Example Ministry",
            billing_email="accounts@ministry.example",
            country="BE",
            vat_id="",
            seats=5,
            by_invoice=True,
            rules=rules,
            now=now,
        )
        staff = accounts.find_by_email(session, DEMO_STAFF_EMAIL)
        assert staff is not None
        domain = groups.add_domain(session, group, admin, "ministry.example", now=now)
        groups.decide_domain(session, staff, domain.id, True, now=now)
        groups.staff_add_private_range(
            session, staff, group, DEMO_GROUP_NETWORK, label="Head office", rules=rules, now=now
        )
    except (GatewayError, DomainError) as error:
        session.rollback()
        click.echo(f"  Demo group skipped: {error}")
        return
    session.commit()
    click.echo(
        f"  Demo group: Example Ministry, admin {DEMO_GROUP_ADMIN} (password "
        f"{DEMO_READER_PASSWORD}), domain ministry.example, network {DEMO_GROUP_NETWORK}"
    )


def _seed_finance_demo(now: datetime) -> int:
    """The demo finance and support staff, and a year of history (once); readers made."""
    from billing.services import demo_history

    for email, name, role in (
        (DEMO_FINANCE_EMAIL, "Demo Finance", StaffRole.FINANCE),
        (DEMO_SUPPORT_EMAIL, "Demo Support", StaffRole.SUPPORT),
    ):
        member, _ = _ensure_reader(email, name, now=now, password=DEMO_STAFF_PASSWORD)
        member.staff_role = role
    db.session().flush()
    return demo_history.seed_history(db.session(), now=now, password=DEMO_READER_PASSWORD)


def _trial_mailer(template: str) -> Callable[[Trial], None]:
    """A notifier that mails a trial's reader ``template`` within the trial's own session."""

    def notify(trial: Trial) -> None:
        assert trial.reader is not None
        session = object_session(trial)
        assert session is not None
        base = current_app.config["PUBLIC_BASE_URL"]
        mail.send(
            session,
            trial.reader.email,
            template,
            reader=trial.reader,
            trial=trial,
            subscribe_url=f"{base}/subscribe",
            account_url=f"{base}/account",
        )

    return notify


def _one_by_one(
    label: str,
    ids: list[int],
    act: Callable[[Session, int], bool],
    on_failure: Callable[[Session, int, Exception], None] | None = None,
) -> tuple[int, int]:
    """Run ``act`` on each id in its own transaction, with a progress line; (done, failed).

    One failure does not stop the others: it is rolled back, handed to ``on_failure`` (in a fresh
    transaction, to record it) and retried by the next tick.
    """
    done = failed = 0
    for position, item in enumerate(ids, start=1):
        session = db.new_session()
        try:
            done += act(session, item)
            session.commit()
        except Exception as exc:
            session.rollback()
            failed += 1
            if on_failure is not None:
                on_failure(session, item, exc)
                session.commit()
            click.echo(f"  {label}: {item} failed, retried next tick: {exc}", err=True)
        finally:
            session.close()
        if position % 100 == 0 or position == len(ids):
            click.echo(f"  {label}: {position}/{len(ids)}")
    return done, failed


@billing_cli.command("tick")
@click.option("--now", "now_text", default=None, help="Run as of this ISO-8601 time (UTC).")
def tick(now_text: str | None) -> None:
    """Start subscriptions scheduled at a trial's end, send due trial reminders and endings, each
    exactly once; safe to run every minute."""
    from billing.services import notices, payments

    now = _parse_now(now_text).now()
    session = db.session()
    gateway = current_app.extensions["stripe_gateway"]
    due_starts = payments.start_due_subscriptions(session, gateway, now=now)

    def start(own: Session, scheduled_id: int) -> bool:
        payments.start_scheduled(own, gateway, scheduled_id, now=now)
        return True

    def record(own: Session, scheduled_id: int, exc: Exception) -> None:
        payments.record_start_failure(own, scheduled_id, f"{type(exc).__name__}: {exc}")

    started, start_failures = _one_by_one("starts", due_starts, start, on_failure=record)
    rate_changes = _tick_vat_rates(session, gateway, now)
    paying = payments.trials_of_subscribers(session, now=now)
    subscribed = payments.trials_awaiting_start(session) | paying
    _one_by_one(
        "conversions",
        [t for t in trials.due_endings(session, now=now) if t in paying],
        lambda own, t: trials.mark_converted(own, t, now=now),
    )
    lead = timedelta(days=current_app.config["TRIAL_REMINDER_DAYS"])
    due = [t for t in trials.due_reminders(session, now=now, lead=lead) if t not in subscribed]
    remind = _trial_mailer("trial_reminder")
    reminders, _ = _one_by_one(
        "reminders", due, lambda own, t: trials.send_reminder(own, t, now=now, notify=remind)
    )
    ended = [t for t in trials.due_endings(session, now=now) if t not in subscribed]
    farewell = _trial_mailer("trial_ended")
    endings, _ = _one_by_one(
        "endings", ended, lambda own, t: trials.end_trial(own, t, now=now, notify=farewell)
    )
    from billing.services import groups

    overdue, _ = _one_by_one(
        "invoices",
        groups.invoices_to_watch(session),
        lambda own, s: groups.watch_invoice(own, gateway, s, now=now),
    )
    group_rules = groups.GroupRules.from_config(current_app.config)
    reclaimed, _ = _one_by_one(
        "idle seats",
        groups.groups_reclaiming(session),
        lambda own, g: groups.reclaim_idle_automatically(own, g, rules=group_rules, now=now) > 0,
    )
    renewals, _ = _one_by_one(
        "renewal notices",
        notices.due_renewal_notices(session, now=now),
        lambda own, s: notices.send_renewal_notice(own, s),
    )
    pruned = decision_cache.prune(session, before=now - timedelta(days=1))
    from billing.services import ip_sessions

    # Yesterday's visitors stay: a process may still be flushing the visits of before midnight.
    ip_sessions.prune_visitors(session, before=now.astimezone(UTC).date() - timedelta(days=1))
    session.commit()
    if pruned:
        click.echo(f"  pruned {pruned} old entitlement change(s)")
    if overdue:
        click.echo(f"  {overdue} group subscription(s) paid by invoice changed status")
    if reclaimed:
        click.echo(f"  {reclaimed} group(s) had idle seats reclaimed")
    failures = f" ({start_failures} failed, retried next tick)" if start_failures else ""
    click.echo(
        f"Tick at {now.isoformat()}: {reminders} reminder(s) sent, {endings} trial(s) ended, "
        f"{started} scheduled subscription(s) started{failures}, "
        f"{renewals} renewal notice(s) sent."
    )
    click.echo(
        f"  {rate_changes} subscription(s) moved to a new VAT rate (from their next invoice)."
    )


def _tick_vat_rates(session: Session, gateway: Any, now: datetime) -> int:
    """The tick's VAT step: every running subscription taxed at its country's rate of today, from
    its next invoice (each in its own transaction)."""
    from billing.services import taxes

    settings = taxes.current_settings()
    ids = taxes.running_subscription_ids(session, now=now)
    session.commit()

    def move(own: Session, subscription_id: int) -> bool:
        change = taxes.apply_rate_change(own, gateway, subscription_id, now=now, settings=settings)
        if change is not None:
            click.echo(
                f"  vat: subscription {subscription_id} ({change.country}) "
                f"{change.before}% -> {change.after}% from its next invoice"
            )
        return change is not None

    moved, _ = _one_by_one("vat rates", ids, move)
    return moved


@billing_cli.command("sync-tax-rates")
def sync_tax_rates() -> None:
    """Create on Stripe the inclusive Tax Rate of every member state's e-newspaper VAT rate of
    today, and store their ids (idempotent; subscriptions get theirs when they start or in tick)."""
    from billing.services import taxes

    session = db.session()
    now = current_clock().now()
    rates = taxes.sync_tax_rates(
        session,
        current_app.extensions["stripe_gateway"],
        now=now,
        settings=taxes.current_settings(),
    )
    session.commit()
    for rate in rates:
        click.echo(f"  {rate.country}: {vat_percent(rate.percentage)}% (tax rate {rate.stripe_id})")
    click.echo(f"Tax rates synced: {len(rates)} member states.")


def vat_percent(value: Any) -> str:
    """A stored percentage as people write it (``7.0000`` is ``7``)."""
    from decimal import Decimal

    from billing.services.vat import plain_rate

    return str(plain_rate(Decimal(value)))


@billing_cli.command("vat-rate")
@click.argument("country")
@click.option("--on", "on_text", default=None, help="The date (YYYY-MM-DD); today if not given.")
def vat_rate(country: str, on_text: str | None) -> None:
    """Show the VAT rate on electronically supplied newspapers that applies in COUNTRY on a date,
    with the standard rate, the legal basis and the country's history."""
    from datetime import date

    from billing.services import vat

    table = vat.rate_table()
    try:
        on = date.fromisoformat(on_text) if on_text else current_clock().now().date()
    except ValueError as exc:
        raise click.BadParameter(f"not a date: {on_text!r}", param_hint="--on") from exc
    code = country.strip().upper()
    try:
        row = table.row_on(code, on)
    except vat.NoRateError as exc:
        raise click.ClickException(
            f"{exc}; the table covers the EU member states from {table.covers_from}"
        ) from exc
    click.echo(f"{code} on {on.isoformat()}: {row.rate}% (standard rate {row.standard}%)")
    click.echo(f"  applies from {row.starts_on.isoformat()}; {row.basis}")
    if row.note:
        click.echo(f"  note: {row.note}")
    for earlier in table.history(code):
        marker = "*" if earlier == row else " "
        click.echo(
            f"  {marker} from {earlier.starts_on.isoformat()}: {earlier.rate}% "
            f"(standard {earlier.standard}%)"
        )
    click.echo(f"Source: {table.source} (checked {table.checked_on.isoformat()})")


# API clients ---------------------------------------------------------------------------------

_API_CLIENT_OPTIONS = {"name": "--name", "scopes": "--scopes", "allowed_origins": "--origin"}


@billing_cli.group("api-client")
def api_client_cli() -> None:
    """API keys and token keys for the content site: create, list, rotate, revoke."""


@api_client_cli.command("create")
@click.option("--name", required=True, help="Who calls the API with this key.")
@click.option(
    "--scopes",
    required=True,
    help="Comma-separated: entitlements:read, tokens:issue, readers:read.",
)
@click.option(
    "--origin",
    "origins",
    multiple=True,
    help="An origin readers may be sent back to (scheme://host[:port]); repeat for more.",
)
def api_client_create(name: str, scopes: str, origins: tuple[str, ...]) -> None:
    """Create an API client and print its key (shown this once only)."""
    from billing.services import api_clients

    session = db.session()
    now = current_clock().now()
    try:
        client, key, token_key = api_clients.create(
            session,
            name=name,
            scopes=scopes.split(","),
            allowed_origins=origins,
            created_by=None,
            now=now,
        )
    except DomainError as exc:
        hint = _API_CLIENT_OPTIONS.get(exc.field or "", "--name")
        raise click.BadParameter(exc.message, param_hint=hint) from exc
    audit.record(
        session,
        now=now,
        actor="cli",
        action="api_client.created",
        target=client,
        details={
            "name": client.name,
            "scopes": client.scopes,
            "origins": client.allowed_origins,
            "token_key": token_key.kid,
        },
    )
    session.commit()
    click.echo(f"Created API client {client.public_id} ({client.name}).")
    click.echo(f"Key (shown once, store it now): {key}")
    click.echo(f"Token key (shown once, the site verifies tokens with it): {token_key}")


@api_client_cli.command("list")
def api_client_list() -> None:
    """List API clients: id, name, key prefix, scopes, origins, created, last used, revoked."""
    from billing.services import api_clients

    clients = api_clients.all_clients(db.session())
    if not clients:
        click.echo("No API clients.")
    for client in clients:
        state = f"revoked {client.revoked_at:%Y-%m-%d %H:%M}" if client.revoked_at else "active"
        last = f"{client.last_used_at:%Y-%m-%d %H:%M}" if client.last_used_at else "never"
        click.echo(
            f"{client.public_id}  {client.name}  {client.key_prefix}  "
            f"scopes={','.join(client.scopes)}  origins={','.join(client.allowed_origins) or '-'}  "
            f"created={client.created_at:%Y-%m-%d}  last_used={last}  {state}"
        )


@api_client_cli.command("rotate")
@click.argument("client_id")
def api_client_rotate(client_id: str) -> None:
    """Give CLIENT_ID a new key and print it; the old key stops working within seconds."""
    from billing.services import api_clients

    session = db.session()
    try:
        client = api_clients.by_public_id(session, client_id)
        key = api_clients.rotate(session, client)
    except DomainError as exc:
        raise click.BadParameter(exc.message, param_hint="CLIENT_ID") from exc
    audit.record(
        session,
        now=current_clock().now(),
        actor="cli",
        action="api_client.rotated",
        target=client,
        details={"key_prefix": client.key_prefix},
    )
    session.commit()
    click.echo(f"Rotated the key of {client.public_id} ({client.name}).")
    click.echo(f"New key (shown once, store it now): {key}")


@api_client_cli.command("revoke")
@click.argument("client_id")
def api_client_revoke(client_id: str) -> None:
    """Revoke CLIENT_ID: its key (within seconds on every server) and token keys stop working."""
    from billing.services import api_clients

    session = db.session()
    now = current_clock().now()
    try:
        client = api_clients.by_public_id(session, client_id)
        api_clients.revoke(client, now=now)
    except DomainError as exc:
        raise click.BadParameter(exc.message, param_hint="CLIENT_ID") from exc
    audit.record(session, now=now, actor="cli", action="api_client.revoked", target=client)
    session.commit()
    click.echo(f"Revoked {client.public_id} ({client.name}).")


# Webhook events ------------------------------------------------------------------------------


@billing_cli.command("worker")
@click.option("--once", is_flag=True, help="Handle everything due now, then exit (for cron).")
def worker(once: bool) -> None:
    """Handle stored Stripe events and send outbox mails, with retries; until stopped (SIGTERM or
    Ctrl-C finish the current item first). Run several on PostgreSQL, one on SQLite."""
    import signal
    import threading

    from billing.worker import Worker

    runner = Worker(current_app._get_current_object())  # type: ignore[attr-defined]
    if once:
        tally = runner.run_once()
        click.echo(f"Worker {runner.name}: {tally.summary()}.")
        return
    stop = threading.Event()

    def finish(signum: int, _frame: object) -> None:
        click.echo(f"Worker {runner.name}: {signal.Signals(signum).name}, stopping.")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, finish)
    click.echo(f"Worker {runner.name} started.")
    runner.run_forever(stop)
    click.echo(f"Worker {runner.name} stopped.")


_REPLAY_CHOICES = "exactly one of --failed, --dead, --stuck or --id"


@billing_cli.command("replay-events")
@click.option("--failed", is_flag=True, help="Events whose last attempt failed (waiting to retry).")
@click.option("--dead", is_flag=True, help="Events given up on (out of attempts, or unhandleable).")
@click.option(
    "--stuck",
    is_flag=True,
    help="Events no worker is getting on with: a claim whose lease expired, or never claimed.",
)
@click.option(
    "--id", "stripe_event_id", metavar="EVT", help="Replay the stored event with this Stripe id."
)
def replay_events(failed: bool, dead: bool, stuck: bool, stripe_event_id: str | None) -> None:
    """Handle stored Stripe events again now, as the worker does, whatever their schedule.

    Each event is handled in its own transaction; an event already processed (or ignored) is a
    no-op, one a live worker holds is left to it. Exits with status 1 when an event still fails
    (its error is recorded again; an event out of attempts, or replayed from dead, stays dead).
    """
    from billing.leases import RetryPolicy
    from billing.models import WebhookEvent, WebhookEventStatus
    from billing.worker import replay, worker_name
    from webhooks import store
    from webhooks.process import Outcome

    if [failed, dead, stuck, stripe_event_id is not None].count(True) != 1:
        raise click.UsageError(f"Give {_REPLAY_CHOICES}.")
    policy = RetryPolicy.from_config(dict(current_app.config))
    now = current_clock().now()
    label = "failed" if failed else "dead" if dead else "stuck"
    with db.new_session() as session:
        if stripe_event_id is not None:
            row = store.by_stripe_id(session, stripe_event_id)
            if row is None:
                raise click.BadParameter(f"no stored event {stripe_event_id}", param_hint="--id")
            if row.status in store.DONE:
                click.echo(
                    f"{row.stripe_event_id} ({row.type}) is already {row.status.value}: "
                    "nothing to do."
                )
                return
            events = [(row.id, row.stripe_event_id, row.type)]
        else:
            condition = (
                store.stuck(now, policy.lease)
                if stuck
                else WebhookEvent.status
                == (WebhookEventStatus.FAILED if failed else WebhookEventStatus.DEAD)
            )
            found = session.execute(
                select(WebhookEvent.id, WebhookEvent.stripe_event_id, WebhookEvent.type)
                .where(condition)
                .order_by(WebhookEvent.stripe_created_at, WebhookEvent.id)
            )
            events = [(r.id, r.stripe_event_id, r.type) for r in found]
            if not events:
                click.echo(f"No {label} events to replay.")
                return
            click.echo(f"Replaying {len(events)} {label} event(s).")
    gateway = current_app.extensions["stripe_gateway"]
    name = f"replay:{worker_name()}"
    counts = dict.fromkeys(Outcome, 0)
    busy = 0
    for position, (row_id, event_id, event_type) in enumerate(events, start=1):
        outcome = replay(row_id, gateway, policy=policy, worker=name)
        if outcome is None:
            busy += 1
            click.echo(f"  [{position}/{len(events)}] {event_id} {event_type}: a worker has it")
            continue
        counts[outcome] += 1
        line = f"  [{position}/{len(events)}] {event_id} {event_type}: {outcome.value}"
        if outcome in (Outcome.FAILED, Outcome.DEAD):
            with db.new_session() as session:
                line += f": {session.get_one(WebhookEvent, row_id).last_error}"
        click.echo(line)
    click.echo(
        f"Done: {counts[Outcome.PROCESSED]} processed, {counts[Outcome.IGNORED]} ignored, "
        f"{counts[Outcome.DUPLICATE] + busy} already done or in hand, "
        f"{counts[Outcome.FAILED]} failed, {counts[Outcome.DEAD]} dead."
    )
    if counts[Outcome.FAILED] or counts[Outcome.DEAD]:
        raise click.exceptions.Exit(1)


# Stripe mirror -------------------------------------------------------------------------------


@billing_cli.command("sync-plans")
def sync_plans() -> None:
    """Put every active plan on sale in Stripe (a product per kind, a price per plan) and store
    their ids; idempotent: a plan whose price still has its terms is left alone."""
    from billing.services import payments, stripe_mirror

    session = db.session()
    results = payments.sync_plans(session, current_app.extensions["stripe_gateway"])
    session.commit()
    if not results:
        click.echo("No active plans: run `flask billing seed-demo` or create plans first.")
        return
    for plan, change in results:
        click.echo(f"  {plan.code}: {change.value} (price {plan.stripe_price_id})")
    counts = {change: sum(1 for _, c in results if c == change) for change in stripe_mirror.Change}
    click.echo(
        f"Plans synced: {counts[stripe_mirror.Change.CREATED]} created, "
        f"{counts[stripe_mirror.Change.UPDATED]} updated, "
        f"{counts[stripe_mirror.Change.UNCHANGED]} unchanged."
    )


@billing_cli.command("reconcile")
def reconcile() -> None:
    """Re-sync every customer, subscription and invoice of ours from Stripe (after an outage, or
    to check the mirror); each object in its own transaction. Exits 1 if any failed. The demo
    history (``seed-demo``'s past, in the mirror only) is left alone."""
    from billing.gateway import is_ours
    from billing.models import Customer, Subscription
    from billing.services.demo_history import is_demo

    gateway = current_app.extensions["stripe_gateway"]
    now = current_clock().now()
    with db.new_session() as session:
        mirrored = list(session.scalars(select(Customer.stripe_id).order_by(Customer.id)))
        known = set(session.scalars(select(Subscription.stripe_id)))
    customers = [c for c in mirrored if not is_demo(c)]
    demo = (len(mirrored) - len(customers), sum(1 for s in known if is_demo(s)))
    known = {s for s in known if not is_demo(s)}
    listed = [s.id for s in gateway.list_subscriptions() if is_ours(s)]
    subscriptions = listed + sorted(known - set(listed))
    summary = [_resync_all("customers", "customer", customers, now)]
    summary.append(_resync_all("subscriptions", "subscription", subscriptions, now))
    with db.new_session() as session:
        billed = [
            c
            for c in session.scalars(
                select(Customer.stripe_id)
                .where(Customer.deleted_at.is_(None))
                .order_by(Customer.id)
            )
            if not is_demo(c)
        ]
    invoices = [i.id for c in billed for i in gateway.list_invoices(customer_id=c) if is_ours(i)]
    summary.append(_resync_all("invoices", "invoice", invoices, now))
    failed = sum(counts.pop("failed", 0) for _, counts in summary)
    click.echo(
        "Reconciled: "
        + "; ".join(
            f"{label} {sum(counts.values())} ("
            + ", ".join(f"{n} {change}" for change, n in counts.items())
            + ")"
            for label, counts in summary
        )
        + f"; {failed} failed."
    )
    if any(demo):
        click.echo(
            f"Left alone: {demo[0]} customers and {demo[1]} subscriptions of the demo history "
            "(in the mirror only, not on Stripe)."
        )
    if failed:
        raise click.exceptions.Exit(1)


def _resync_all(
    label: str, kind: str, stripe_ids: list[str], now: datetime
) -> tuple[str, dict[str, int]]:
    """Re-sync each object in its own transaction, with a progress line; count the outcomes."""
    from billing.services import stripe_mirror

    gateway = current_app.extensions["stripe_gateway"]
    counts = dict.fromkeys([*(c.value for c in stripe_mirror.Change), "failed"], 0)
    for position, stripe_id in enumerate(stripe_ids, start=1):
        session = db.new_session()
        try:
            change = stripe_mirror.resync(session, gateway, kind, stripe_id, now=now)
            session.commit()
            counts[change.value] += 1
        except Exception as exc:
            session.rollback()
            counts["failed"] += 1
            click.echo(f"  {label}: {stripe_id} failed: {exc}", err=True)
        finally:
            session.close()
        if position % 100 == 0 or position == len(stripe_ids):
            click.echo(f"  {label}: {position}/{len(stripe_ids)}")
    return label, counts


# Reports -------------------------------------------------------------------------------------


@billing_cli.command("export")
@click.argument("report_name", metavar="REPORT")
@click.option("--from", "start", default=None, help="First day (YYYY-MM-DD); default: last month.")
@click.option("--to", "end", default=None, help="Last day, included (YYYY-MM-DD).")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "xlsx"]), default="csv", show_default=True
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option("--currency", default=None, help="Only this currency (eur).")
@click.option("--plan", default=None, help="Only this plan code.")
@click.option("--country", default=None, help="Only this country (two letters).")
@click.option("--owner", type=click.Choice(["individual", "group"]), default=None)
@click.option("--period", type=click.Choice(["week", "month", "quarter"]), default=None)
def export(report_name: str, fmt: str, out: str, **options: str | None) -> None:
    """Export REPORT (invoices, vat, mrr, trials, churn, groups, dunning) to a file, streaming
    whatever its size, with a progress line; the export is written to the audit log."""
    from billing.services import reports
    from billing.services.reports import export as exporting
    from billing.services.reports.base import parse_filters

    try:
        report = reports.get(report_name)
    except DomainError as exc:
        names = ", ".join(reports.REPORTS)
        raise click.BadParameter(
            f"{exc.message} Choose one of {names}.", param_hint="REPORT"
        ) from exc
    now = current_clock().now()
    values = {"from": options.pop("start"), "to": options.pop("end"), **options}
    try:
        filters = parse_filters(values, today=now.date(), report=report)
    except DomainError as exc:
        raise click.BadParameter(exc.message, param_hint=f"--{exc.field}") from exc
    progress = exporting.Progress(
        every=100_000, report=lambda n: click.echo(f"  {report.name}: {n:,} rows", err=True)
    )
    session = db.session()
    if fmt == exporting.Format.CSV:
        with open(out, "wb") as target:
            for chunk in exporting.csv_chunks(session, report, filters, now, progress):
                target.write(chunk)
    else:
        exporting.write_xlsx(session, report, filters, now, out, progress)
    session.rollback()
    reports.record_export(
        session, now=now, actor="cli", report=report, filters=filters, fmt=fmt, rows=progress.rows
    )
    session.commit()
    click.echo(
        f"Exported {progress.rows:,} rows of {report.name} "
        f"({filters.start} to {filters.end}) to {out}."
    )
