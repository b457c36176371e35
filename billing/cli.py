"""Command-line tools: ``flask db ...`` for the schema and ``flask billing ...`` for operations."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from billing import db
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
DEMO_NEWSPAPER_CLIENT_ID = "cli_demo-newspaper"
DEMO_NEWSPAPER_KEY = "tg_newsdemo.demo-newspaper-key-for-local-use-only-00000"
DEMO_NEWSPAPER_ORIGIN = "http://127.0.0.1:5001"
"""The demo newspaper (``examples/newspaper``) uses this client and key by default."""


def init_app(app: Flask) -> None:
    """Register the command groups on ``app``."""
    app.cli.add_command(db_cli)
    app.cli.add_command(billing_cli)


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
    newspaper = _ensure_demo_newspaper(now) if current_app.config["DEV_MODE"] else None
    session.commit()
    click.echo("Demo data ready.")
    click.echo(f"  Staff login: {DEMO_STAFF_EMAIL} / {DEMO_STAFF_PASSWORD}")
    click.echo(f"  Demo readers (password {DEMO_READER_PASSWORD}): " + ", ".join(demo_trials))
    if newspaper is not None:
        known = newspaper.key_hash == _demo_newspaper_key_hash()
        key = DEMO_NEWSPAPER_KEY if known else "rotated since"
        state = f"revoked {newspaper.revoked_at:%Y-%m-%d}" if newspaper.revoked_at else "active"
        click.echo(
            f"  Demo newspaper API client: {newspaper.public_id}, key {key}, "
            f"origins {', '.join(newspaper.allowed_origins)} ({state})"
        )


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
    from billing.services import payments

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
    subscribed = payments.trials_awaiting_start(session)
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
    pruned = decision_cache.prune(session, before=now - timedelta(days=1))
    session.commit()
    if pruned:
        click.echo(f"  pruned {pruned} old entitlement change(s)")
    failures = f" ({start_failures} failed, retried next tick)" if start_failures else ""
    click.echo(
        f"Tick at {now.isoformat()}: {reminders} reminder(s) sent, {endings} trial(s) ended, "
        f"{started} scheduled subscription(s) started{failures}."
    )


# API clients ---------------------------------------------------------------------------------

_API_CLIENT_OPTIONS = {"name": "--name", "scopes": "--scopes", "allowed_origins": "--origin"}


@billing_cli.group("api-client")
def api_client_cli() -> None:
    """API keys for the content site: create, list, rotate, revoke."""


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
        client, key = api_clients.create(
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
        details={"name": client.name, "scopes": client.scopes, "origins": client.allowed_origins},
    )
    session.commit()
    click.echo(f"Created API client {client.public_id} ({client.name}).")
    click.echo(f"Key (shown once, store it now): {key}")


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
    """Revoke CLIENT_ID: its key stops working for good (within seconds on every server)."""
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
    from billing.worker import worker_name
    from webhooks import store
    from webhooks.process import Outcome, process

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
        with db.new_session() as session:
            claimed = store.claim_for_replay(
                session, row_id, now=current_clock().now(), worker=name, lease=policy.lease
            )
            session.commit()
        if not claimed:
            busy += 1
            click.echo(f"  [{position}/{len(events)}] {event_id} {event_type}: a worker has it")
            continue
        outcome = process(row_id, gateway, worker=name, policy=policy)
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
    to check the mirror); each object in its own transaction. Exits 1 if any failed."""
    from billing.gateway import is_ours
    from billing.models import Customer, Subscription

    gateway = current_app.extensions["stripe_gateway"]
    now = current_clock().now()
    with db.new_session() as session:
        customers = list(session.scalars(select(Customer.stripe_id).order_by(Customer.id)))
        known = set(session.scalars(select(Subscription.stripe_id)))
    listed = [s.id for s in gateway.list_subscriptions() if is_ours(s)]
    subscriptions = listed + sorted(known - set(listed))
    summary = [_resync_all("customers", "customer", customers, now)]
    summary.append(_resync_all("subscriptions", "subscription", subscriptions, now))
    with db.new_session() as session:
        billed = session.scalars(
            select(Customer.stripe_id).where(Customer.deleted_at.is_(None)).order_by(Customer.id)
        ).all()
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
