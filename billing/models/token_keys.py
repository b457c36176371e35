"""Token keys: each API client's own keys for signing access tokens (never ``SECRET_KEYS``)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from billing.models.base import Base


class TokenKeyState(StrEnum):
    """Where a token key is in its life at a given moment (derived from its times, not stored)."""

    PENDING = "pending"
    """Listed (it verifies) but not signing yet: the site installs it before it starts to sign."""
    SIGNING = "signing"
    """The client's newest key whose signing time has come: it signs every new token."""
    VERIFYING = "verifying"
    """An older key, still verifying tokens it signed until it retires."""
    RETIRED = "retired"
    """Past its retirement: it verifies nothing any more."""
    REVOKED = "revoked"
    """Revoked by staff: it verifies nothing any more."""


class TokenKey(Base):
    """One token key of an API client; its secret is stored wrapped (encrypted), never in clear."""

    __tablename__ = "token_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    kid: Mapped[str] = mapped_column(String(32), unique=True)
    """The key's public id, named in every token it signs (``tk_`` and 8 characters)."""
    api_client_id: Mapped[int] = mapped_column(
        ForeignKey("api_clients.id", ondelete="CASCADE"), index=True
    )
    wrapped_secret: Mapped[str] = mapped_column(String(255))
    """The secret, encrypted with a key derived from ``TOKEN_KEY_WRAPPING_SECRETS``."""
    created_at: Mapped[datetime]
    signs_from: Mapped[datetime]
    """From this moment the key signs, unless a newer key's signing time has come too."""
    retires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    def is_listed(self, now: datetime) -> bool:
        """Whether the key verifies at ``now``: neither revoked nor retired."""
        return self.revoked_at is None and (self.retires_at is None or now < self.retires_at)
