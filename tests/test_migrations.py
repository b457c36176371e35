"""The schema is built only by migrations, and they agree with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from billing import db
from billing.models import Base


def _differences(url: str) -> list[object]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_the_migrated_schema_matches_the_models(database_url: str) -> None:
    assert _differences(database_url) == []


def test_downgrading_to_base_and_upgrading_again_restores_the_schema(database_url: str) -> None:
    db.downgrade(database_url, "base")
    engine = db.make_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    db.upgrade(database_url)
    assert _differences(database_url) == []
