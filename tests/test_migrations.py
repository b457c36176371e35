"""The schema is built only by migrations, and they agree with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from billing import db
from billing.models import Base, Refund
from tests import factories


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


def test_migration_0010_runs_on_a_database_whose_invoices_have_refunds(
    app: Flask, session: Session, database_url: str
) -> None:
    invoice = factories.InvoiceFactory(amount_paid=1200, total=1200)
    session.add(
        Refund(
            stripe_id="re_1",
            invoice_id=invoice.id,
            amount=100,
            currency="eur",
            status="succeeded",
            created_at=invoice.created_at,
        )
    )
    session.commit()
    session.close()

    db.downgrade(database_url, "0009")
    db.upgrade(database_url)

    assert _differences(database_url) == []
    assert session.scalars(select(Refund.invoice_id)).all() == [invoice.id]
