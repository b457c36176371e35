"""The development outbox: mails the console backend "sent". Registered only in development."""

from __future__ import annotations

from flask import Blueprint, render_template, request
from sqlalchemy import func, select

from billing import db
from billing.models import OutboxMessage

bp = Blueprint("dev", __name__, url_prefix="/dev")
PAGE_SIZE = 20


@bp.get("/outbox")
def outbox() -> str:
    """The newest mails first, twenty a page, optionally only those to one address."""
    to = request.args.get("to", "").strip().lower()
    page = max(request.args.get("page", 1, type=int) or 1, 1)
    query = select(OutboxMessage)
    count = select(func.count()).select_from(OutboxMessage)
    if to:
        query = query.where(OutboxMessage.to == to)
        count = count.where(OutboxMessage.to == to)
    messages = (
        db.session()
        .scalars(
            query.order_by(OutboxMessage.id.desc()).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
        )
        .all()
    )
    total = db.session().scalar(count) or 0
    return render_template(
        "dev/outbox.html", messages=messages, to=to, page=page, pages=max(1, -(-total // PAGE_SIZE))
    )
