"""The staff area, behind roles: look readers up and see where they stand (read-only for now)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Blueprint, abort, render_template, request
from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import selectinload

from billing import db
from billing.clock import current_clock
from billing.models import Reader, StaffRole, Subscription
from billing.services.entitlements import Decision
from billing.views.guards import decision_for, staff_required

bp = Blueprint("staff", __name__, url_prefix="/staff")

S = TypeVar("S", bound=Select[Any])
PAGE_SIZE = 50
SEARCH_MAX_LENGTH = 320
PAGE_WINDOW = 2
"""How many page links to show on each side of the current page."""

_WITH_ENTITLEMENTS = (
    selectinload(Reader.trial),
    selectinload(Reader.grants),
    selectinload(Reader.subscriptions).selectinload(Subscription.plan),
)


@dataclass(frozen=True)
class Pagination:
    """Where a page sits in a result: its number, the count of pages and of items."""

    page: int
    pages: int
    total: int

    @property
    def has_previous(self) -> bool:
        """Whether there is a page before this one."""
        return self.page > 1

    @property
    def has_next(self) -> bool:
        """Whether there is a page after this one."""
        return self.page < self.pages

    def links(self) -> list[int | None]:
        """Page numbers to link to: the first, the last and a window around this page.

        ``None`` stands for a gap of skipped pages.
        """
        shown = {1, self.pages} | set(
            range(max(1, self.page - PAGE_WINDOW), min(self.pages, self.page + PAGE_WINDOW) + 1)
        )
        links: list[int | None] = []
        previous = 0
        for number in sorted(shown):
            if number - previous > 1:
                links.append(None)
            links.append(number)
            previous = number
        return links


def _decision(reader: Reader) -> Decision:
    return decision_for(reader, current_clock().now())


def _search(query: S, q: str) -> S:
    if not q:
        return query
    return query.where(
        or_(Reader.email.icontains(q, autoescape=True), Reader.name.icontains(q, autoescape=True))
    )


@bp.get("/readers")
@staff_required(StaffRole.SUPPORT, StaffRole.FINANCE)
def readers() -> str:
    """Readers, newest first, 50 a page, optionally only those whose e-mail or name contains ``q``."""
    q = request.args.get("q", "").strip()[:SEARCH_MAX_LENGTH]
    page = request.args.get("page", 1, type=int)
    session = db.session()
    total = session.scalar(_search(select(func.count()).select_from(Reader), q)) or 0
    pages = max(1, -(-total // PAGE_SIZE))
    if page < 1 or page > pages:
        abort(404, f"There is no page {page}: the readers fill {pages}.")
    found = session.scalars(
        _search(select(Reader), q)
        .options(*_WITH_ENTITLEMENTS)
        .order_by(Reader.created_at.desc(), Reader.id.desc())
        .limit(PAGE_SIZE)
        .offset((page - 1) * PAGE_SIZE)
    ).all()
    rows = [(reader, _decision(reader)) for reader in found]
    return render_template(
        "staff/readers.html",
        rows=rows,
        q=q,
        pagination=Pagination(page=page, pages=pages, total=total),
    )


@bp.get("/readers/<public_id>", endpoint="reader")
@staff_required(StaffRole.SUPPORT, StaffRole.FINANCE)
def reader_detail(public_id: str) -> str:
    """One reader: account, trial, entitlement decision, complimentary grants, subscriptions."""
    found = db.session().scalar(
        select(Reader).where(Reader.public_id == public_id).options(*_WITH_ENTITLEMENTS)
    )
    if found is None:
        abort(404, "No reader has this id.")
    now = current_clock().now()
    return render_template(
        "staff/reader.html",
        reader=found,
        decision=_decision(found),
        now=now,
        grants=sorted(found.grants, key=lambda g: g.starts_at, reverse=True),
        subscriptions=sorted(found.subscriptions, key=lambda s: s.created_at, reverse=True),
    )
