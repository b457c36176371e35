"""The audit log: who did what to whom, and when."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Mapper, Session

from billing.models import AuditLog, Reader


def record(
    session: Session,
    *,
    now: datetime,
    actor: Reader | str,
    action: str,
    target: Any = None,
    details: dict[str, Any] | None = None,
    ip: str | None = None,
) -> AuditLog:
    """Append an audit entry; ``actor`` is a reader or a label such as ``"cli"`` or ``"stripe"``.

    ``target`` is any model with a ``public_id`` (or ``id``); its class name is the target type.
    """
    target_id = None
    if target is not None:
        target_id = str(getattr(target, "public_id", None) or getattr(target, "id", ""))
    entry = AuditLog(
        occurred_at=now,
        actor_id=actor.id if isinstance(actor, Reader) else None,
        actor_label=actor.email if isinstance(actor, Reader) else actor,
        action=action,
        target_type=type(target).__name__ if target is not None else None,
        target_id=target_id,
        details=details or {},
        ip=ip,
    )
    session.add(entry)
    return entry


class AuditLogIsAppendOnly(Exception):
    """Something tried to change or delete an audit entry."""


@event.listens_for(AuditLog, "before_update")
@event.listens_for(AuditLog, "before_delete")
def _refuse_changes(_mapper: Mapper[AuditLog], _connection: object, entry: AuditLog) -> None:
    """The application only ever appends to the audit log."""
    raise AuditLogIsAppendOnly(f"audit entry {entry.id} cannot be changed or deleted")
