"""Fixtures shared by the whole suite, in the shape of Flask's tutorial: ``app``, ``client``, ``runner``.

The database is real: SQLite by default, PostgreSQL when ``TEST_DATABASE_URL`` is set (``make test``
runs both). Each test run (and each xdist worker) gets a throwaway database, built by running the
Alembic migrations; every test starts from empty tables.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask, g, request_started, request_tearing_down
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import text
from sqlalchemy.orm import Session

from billing import create_app
from billing import db as billing_db
from billing.clock import FixedClock
from billing.extensions import limiter
from billing.gateway import StripeGateway
from billing.models import Base, OutboxMessage, Plan
from tests import factories

pytest_plugins = ["tests.browser", "tests.stripe_server", "tests.smtp_server", "tests.clock_ahead"]

START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"
NO_STRIPE = "http://127.0.0.1:9"
"""Where a test app that did not ask for :func:`stripe` looks for Stripe: a port nothing serves.

Not the development default (127.0.0.1:8420): that is the localstripe of a running ``make run``,
and a test writing its customers into the developer's demo (or passing only because one answers
there) is neither isolated nor repeatable.
"""

BRAND = {
    "PUBLICATION_NAME": "The Daily Meridian",
    "PUBLICATION_URL": "https://meridian.example",
    "PUBLICATION_ACCENT": "#8a1c1c",
    "SUPPORT_EMAIL": "help@meridian.example",
    "TERMS_URL": "https://meridian.example/terms",
    "PRIVACY_URL": "https://meridian.example/privacy",
    "IMPRINT_URL": "https://meridian.example/imprint",
}
"""The demo newspaper's brand settings."""


def real_now() -> datetime:
    """The wall-clock time to whole seconds: localstripe stamps and signs with real time."""
    return datetime.now(UTC).replace(microsecond=0)


def _postgres_database(admin_url: str, worker: str) -> Iterator[str]:
    """Create a database for this run on the server of ``admin_url``; drop it afterwards."""
    name = f"tollgate_test_{worker}_{uuid.uuid4().hex[:10]}"
    admin = billing_db.make_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base, _, _ = admin_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[str]:
    """A migrated, empty database for this test session (SQLite file or PostgreSQL database)."""
    admin_url = os.environ.get("TEST_DATABASE_URL")
    if admin_url:
        generator = _postgres_database(admin_url, re.sub(r"\W", "", worker_id))
        url = next(generator)
    else:
        generator = None
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"
    billing_db.upgrade(url)
    yield url
    if generator is not None:
        next(generator, None)


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> FixedClock:
    """A clock that stands still at 2026-11-25 09:00 UTC until the test moves it.

    In a test marked ``wall_clock`` it stands still at the real time instead, to whole seconds:
    localstripe stamps and signs its objects with the real clock, so a test whose app talks to it
    must start there.
    """
    if request.node.get_closest_marker("wall_clock") is not None:
        return FixedClock(real_now())
    return FixedClock(START)


class AppSettings(dict[str, Any]):
    """The test app's settings: changing one once the app is made is an error, not a no-op (a
    fixture asked for after ``app`` once silently left CSRF on for a whole test module)."""

    made = False

    def __setitem__(self, key: str, value: Any) -> None:
        if self.made:
            raise RuntimeError(
                f"app_config[{key!r}] was changed after the app was made from it: "
                "ask for the fixture that changes it before `app` (or change app.config)"
            )
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


@pytest.fixture
def app_config(database_url: str, clock: FixedClock) -> dict[str, Any]:
    """Settings for the test app; tests may change them before asking for ``app``."""
    return AppSettings(
        {
            "TESTING": True,
            "DATABASE_URL": database_url,
            "SECRET_KEYS": [TEST_SECRET],
            "CLOCK": clock,
            "SMTP_URL": "",
            "PUBLIC_BASE_URL": "http://localhost",
            "SERVER_NAME": None,
            "STRIPE_API_BASE": NO_STRIPE,
            "STRIPE_JS_URL": f"{NO_STRIPE}/js.stripe.com/v3/",
        }
    )


@pytest.fixture
def stripe(app_config: dict[str, Any], stripe_reset: Any) -> Any:
    """Point the test app at this session's emptied localstripe (ask for it before ``app``).

    Returns the :class:`tests.stripe_server.LocalstripeServer`, whose helpers act as the browser
    or the bank would.
    """
    app_config["STRIPE_API_BASE"] = stripe_reset.url
    app_config["STRIPE_JS_URL"] = f"{stripe_reset.url}/js.stripe.com/v3/"
    app_config["STRIPE_MAX_NETWORK_RETRIES"] = 0
    return stripe_reset


@pytest.fixture
def branded_mail(smtp_server: tuple[Any, int]) -> dict[str, Any]:
    """Settings that send mail to this test's SMTP server, from and in the demo newspaper's
    :data:`BRAND`: add them to ``app_config``."""
    _, port = smtp_server
    return {
        **BRAND,
        "SMTP_URL": f"smtp://127.0.0.1:{port}",
        "MAIL_FROM": "The Daily Meridian <billing@meridian.example>",
    }


@pytest.fixture
def publisher_in_belgium(app_config: dict[str, Any]) -> None:
    """The publisher is established in Belgium (``PUBLISHER_COUNTRY``); ask for it before ``app``."""
    app_config["PUBLISHER_COUNTRY"] = "BE"


@pytest.fixture
def plans(stripe: Any, app: Flask, session: Session, gateway: StripeGateway) -> dict[str, Plan]:
    """The demo plans (monthly 12.00, yearly 120.00, group seat 96.00 EUR), on sale in this
    test's localstripe and mirrored."""
    # imported here, not at the top: it imports the stripe_server plugin, which pytest must load first
    from tests.payments_support import plans_on_sale

    return plans_on_sale(session, gateway)


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Flask]:
    """The Tollgate app on the test database; tables are emptied after the test.

    The test runs inside an app context (for factories, services and the session). Test-client
    requests would reuse that context and its ``g``; :func:`_isolate_requests` gives each request
    its own ``g`` and database session, as a real server does.
    """
    application = create_app(app_config)
    if isinstance(app_config, AppSettings):
        app_config.made = True
    limiter.reset()
    with application.app_context():
        test_session = billing_db.session()
        factories.bind(test_session)
        with _isolate_requests(application, test_session):
            yield application
        factories.bind(None)
        test_session.rollback()
        # visits still waiting would be written at exit, into a database gone by then
        application.extensions["ip_sessions"].flush()
        _empty_tables(billing_db.engine())
    billing_db.dispose(application)


@contextmanager
def _isolate_requests(application: Flask, test_session: Session) -> Iterator[None]:
    """Swap the test's ``g`` out while a request runs in the test's own app context.

    Requests served in other threads (the live server) have their own context and are left alone.
    After each request the test's session forgets what it had loaded, so the test sees its effects.
    """
    test_g = g._get_current_object()
    saved: list[dict[str, Any]] = []

    def started(_sender: Flask, **_extra: Any) -> None:
        if g._get_current_object() is test_g:
            saved.append(dict(vars(test_g)))
            vars(test_g).clear()

    def tearing_down(_sender: Flask, **_extra: Any) -> None:
        if g._get_current_object() is not test_g or not saved:
            return
        request_session = vars(test_g).get("db_session")
        if request_session is not None:
            request_session.close()
        vars(test_g).clear()
        vars(test_g).update(saved.pop())
        test_session.expire_all()

    request_started.connect(started, application, weak=False)
    request_tearing_down.connect(tearing_down, application, weak=False)
    try:
        yield
    finally:
        request_started.disconnect(started, application)
        request_tearing_down.disconnect(tearing_down, application)


def _empty_tables(engine: Any) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - names from metadata


@pytest.fixture
def session(app: Flask) -> Session:
    """The app context's database session (the one views in the same context use)."""
    return billing_db.session()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client for the app."""
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    """A runner for the app's CLI commands."""
    return app.test_cli_runner()


class Outbox:
    """The dev outbox as tests see it: the mails the console backend stored."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def all(self, to: str | None = None) -> list[OutboxMessage]:
        """Every mail sent so far (to ``to`` only, when given), oldest first."""
        self._session.expire_all()
        messages = self._session.query(OutboxMessage).order_by(OutboxMessage.id).all()
        return [m for m in messages if to is None or m.to == to]

    def last_link(self, to: str, path_fragment: str) -> str:
        """The last link containing ``path_fragment`` in mails to ``to``, as a path with query."""
        for message in reversed(self.all(to)):
            for url in re.findall(r"https?://\S+", message.body):
                if path_fragment in url:
                    return re.sub(r"^https?://[^/]+", "", url)
        raise AssertionError(f"no mail to {to} with a link containing {path_fragment!r}")


@pytest.fixture
def outbox(session: Session) -> Outbox:
    """The mails sent during the test."""
    return Outbox(session)


def csrf_token(client: FlaskClient, path: str) -> str:
    """Fetch ``path`` and return the CSRF token of its form."""
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page) or re.search(
        r'name="csrf_token" value="([^"]+)"', page
    )
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def post_form(client: FlaskClient, path: str, data: dict[str, str], **kwargs: Any) -> Any:
    """Submit a form the way a browser does: fetch the page for its CSRF token, then post."""
    return client.post(path, data={**data, "csrf_token": csrf_token(client, path)}, **kwargs)
