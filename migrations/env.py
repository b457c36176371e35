"""Alembic environment: runs migrations against the URL the caller configured.

``billing.db.alembic_config(url)`` builds the configuration; ``flask billing db upgrade`` and the
tests use it. Without a URL it falls back to the app's settings (``DATABASE_URL``).
"""

from __future__ import annotations

from alembic import context

from billing import config as settings
from billing.db import make_engine
from billing.models import Base

alembic_config = context.config
url = alembic_config.get_main_option("sqlalchemy.url") or settings.from_env()["DATABASE_URL"]


def run_offline() -> None:
    """Emit SQL to stdout instead of running it (``--sql``)."""
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the migrations on a live connection; batch mode lets SQLite alter tables."""
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
