"""Staff pages (support and admins) for groups: approve the domains and office networks that
organisations claim, and add private ranges for them. These routes join the staff blueprint
(``/staff/groups...``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import db
from billing.clock import current_clock
from billing.errors import DomainError
from billing.models import Group, StaffRole
from billing.services import groups
from billing.services.groups import GroupRules
from billing.views import guards
from billing.views.forms import ButtonForm
from billing.views.staff import bp


@bp.get("/groups")
@guards.staff_required(StaffRole.SUPPORT)
def groups_list() -> ResponseReturnValue:
    """Every organisation with its seats, and the claims waiting for approval."""
    session, now = db.session(), current_clock().now()
    rows = [
        (g, groups.seat_count(session, g, now), groups.seats_in_use(session, g))
        for g in session.scalars(select(Group).order_by(Group.name))
    ]
    domains, ranges = groups.pending_approvals(session)
    return render_template(
        "staff/groups/list.html", rows=rows, domains=domains, ranges=ranges, form=ButtonForm()
    )


def _decide(action: Callable[[Session, Any], Any], done: str) -> ResponseReturnValue:
    if not ButtonForm().validate_on_submit():
        abort(400)
    session = db.session()
    try:
        action(session, current_clock().now())
    except DomainError as error:
        session.rollback()
        flash(error.message, "error")
        return redirect(url_for("staff.groups_list"))
    session.commit()
    flash(done)
    return redirect(url_for("staff.groups_list"))


@bp.post("/groups/domains/<int:domain_id>")
@guards.staff_required(StaffRole.SUPPORT)
def group_domain_decision(domain_id: int) -> ResponseReturnValue:
    """Approve (``?approve=1``) or refuse a domain claim."""
    approve = request.args.get("approve") == "1"
    return _decide(
        lambda s, now: groups.decide_domain(s, guards.reader(), domain_id, approve, now=now),
        "Domain approved." if approve else "Domain refused.",
    )


@bp.post("/groups/ranges/<int:range_id>")
@guards.staff_required(StaffRole.SUPPORT)
def group_range_decision(range_id: int) -> ResponseReturnValue:
    """Approve (``?approve=1``) or refuse an office network."""
    approve = request.args.get("approve") == "1"
    return _decide(
        lambda s, now: groups.decide_ip_range(s, guards.reader(), range_id, approve, now=now),
        "Network approved." if approve else "Network refused.",
    )


@bp.post("/groups/<public_id>/private-range")
@guards.staff_required(StaffRole.SUPPORT)
def group_private_range(public_id: str) -> ResponseReturnValue:
    """Add (and approve) a range for a group, private and reserved ones allowed."""
    group = groups.by_public_id(db.session(), public_id)
    if group is None:
        abort(404)
    cidr, label = request.form.get("cidr", ""), request.form.get("label", "")
    rules = GroupRules.from_config(current_app.config)
    return _decide(
        lambda s, now: groups.staff_add_private_range(
            s, guards.reader(), group, cidr, label=label, rules=rules, now=now
        ),
        "Network added and approved.",
    )
