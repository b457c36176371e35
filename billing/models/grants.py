"""Complimentary access granted by staff (press, staff, partners)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.models.base import Base

if TYPE_CHECKING:
    from billing.models.readers import Reader


class ComplimentaryGrant(Base):
    """Free access for a reader between ``starts_at`` and ``expires_at``, with the reason why."""

    __tablename__ = "complimentary_grants"

    id: Mapped[int] = mapped_column(primary_key=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("readers.id", ondelete="CASCADE"), index=True)
    reason: Mapped[str] = mapped_column(String(500))
    granted_by_id: Mapped[int | None] = mapped_column(ForeignKey("readers.id", ondelete="SET NULL"))
    starts_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime]

    reader: Mapped[Reader] = relationship(back_populates="grants", foreign_keys=[reader_id])

    __table_args__ = (CheckConstraint("expires_at > starts_at", name="expires_after_start"),)

    def is_active(self, now: datetime) -> bool:
        """Whether the grant gives access at ``now``."""
        return self.revoked_at is None and self.starts_at <= now < self.expires_at
