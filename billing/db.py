"""The database: one SQLAlchemy engine per app, one session per request.

Views get the session with :func:`session`, do their work through services, and commit; the
session is closed (and anything uncommitted rolled back) when the request ends, so a request that
fails half-way writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def normalise_url(url: str) -> str:
    """Return ``url`` with the psycopg 3 driver named for PostgreSQL URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with the settings Tollgate relies on (FKs on SQLite too)."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def init_app(app: Flask) -> None:
    """Create the app's engine and session factory, and close the request's session at teardown."""
    engine = make_engine(app.config["DATABASE_URL"])
    app.extensions["db_engine"] = engine
    app.extensions["db_autocommit_engine"] = _autocommit_engine(engine)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    app.extensions["db_sessionmaker"] = factory
    from billing.services.decision_cache import track_changes

    track_changes(factory)
    app.teardown_appcontext(close_session)


def _autocommit_engine(engine: Engine) -> Engine:
    """An engine of autocommit connections to ``engine``'s database, in a pool of its own
    (connections never switch modes), without the pre-ping's round trip: a caller that finds
    its connection gone retries once (see :func:`webhooks.stripe_webhook`). SQLite shares the
    engine's pool instead, so an in-memory database stays one database."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return create_engine(
        engine.url,
        isolation_level="AUTOCOMMIT",
        pool_reset_on_return=None,
        pool_pre_ping=False,
    )


def ping(timeout: float) -> None:
    """Run ``SELECT 1`` on a connection of its own, giving up after about ``timeout`` seconds
    (connecting included); raise :class:`sqlalchemy.exc.SQLAlchemyError` when it fails."""
    from sqlalchemy import text
    from sqlalchemy.pool import NullPool

    url = normalise_url(current_app.config["DATABASE_URL"])
    if url.startswith("sqlite"):
        connect_args: dict[str, Any] = {"timeout": timeout}
    else:
        # libpq counts whole seconds, and at least 2.
        connect_args = {
            "connect_timeout": max(2, round(timeout)),
            "options": f"-c statement_timeout={int(timeout * 1000)}",
        }
    probe = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with probe.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        probe.dispose()


def engine() -> Engine:
    """The current app's engine."""
    return current_app.extensions["db_engine"]  # type: ignore[no-any-return]


def dispose(app: Flask) -> None:
    """Close every pooled connection of ``app``'s engines (at shutdown, and after each test)."""
    app.extensions["db_engine"].dispose()
    app.extensions["db_autocommit_engine"].dispose()


def autocommit_engine() -> Engine:
    """The app's autocommit engine: each statement is its own transaction, durable when it
    returns. For a request whose only write is one statement (storing a webhook event), this
    saves the round trips of ``BEGIN``, ``COMMIT`` and the pool's pre-ping."""
    return current_app.extensions["db_autocommit_engine"]  # type: ignore[no-any-return]


def new_session() -> Session:
    """A fresh session outside the request's one (CLI loops, background work); caller closes it."""
    return current_app.extensions["db_sessionmaker"]()  # type: ignore[no-any-return]


def session() -> Session:
    """The session of the current request or app context, created on first use."""
    if "db_session" not in g:
        g.db_session = new_session()
    return g.db_session  # type: ignore[no-any-return]


def close_session(_exc: BaseException | None = None) -> None:
    """Close the app context's session (registered as a teardown)."""
    db_session = g.pop("db_session", None)
    if db_session is not None:
        db_session.close()


MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Any:
    """An Alembic configuration for the migrations in ``migrations/`` against ``url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` by running the migrations."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Take the database at ``url`` back to ``revision``."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)
