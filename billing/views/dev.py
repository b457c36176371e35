"""The development outbox: mails the console backend "sent". Registered only in development."""

from __future__ import annotations

from flask import Blueprint, Response, abort, render_template, request
from sqlalchemy import func, select

from billing import db
from billing.models import OutboxMessage

bp = Blueprint("dev", __name__, url_prefix="/dev")
PAGE_SIZE = 20
HTML_MAIL_POLICY = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data: https:"
)
"""A mail's HTML is shown as its own document, sandboxed: no script, form or navigation of ours
runs in it, and it loads nothing but its styles and images (as a mail client would)."""


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


@bp.get("/outbox/<int:mail_id>.html")
def outbox_html(mail_id: int) -> Response:
    """The HTML part of one mail, as a mail client would show it."""
    message = db.session().get(OutboxMessage, mail_id)
    if message is None or not message.html:
        abort(404)
    return Response(
        message.html,
        mimetype="text/html",
        headers={"Content-Security-Policy": HTML_MAIL_POLICY},
    )
