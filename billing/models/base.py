"""Declarative base, column types and helpers shared by every model."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import DateTime, MetaData, String, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use the clock")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Base of every Tollgate model; constraint names follow one convention for Alembic."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


def new_public_id(prefix: str) -> str:
    """A random, URL-safe public identifier such as ``rdr_3kTMd...``; never the primary key."""
    return f"{prefix}_{secrets.token_urlsafe(12)}"


def public_id_column(prefix: str) -> Mapped[str]:
    """A unique public id column filled with :func:`new_public_id` for ``prefix``."""
    return mapped_column(String(32), unique=True, default=lambda: new_public_id(prefix))


Currency = String(3)
"""ISO 4217 code, lower-case as Stripe writes it (``eur``)."""


def enum_type(enum_cls: type[Any], name: str) -> Any:
    """A portable string column type for ``enum_cls`` with a CHECK constraint on its values."""
    from sqlalchemy import Enum

    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        validate_strings=True,
        values_callable=lambda members: [member.value for member in members],
        length=32,
    )
