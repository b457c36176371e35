"""The staff area's home, ``/staff/``: the sections the logged-in staff member's role may open.

These routes join the staff blueprint. Every section is listed with the roles that may open it,
the same roles its own guard allows (admins may open everything).
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import render_template

from billing.models import StaffRole
from billing.views import guards
from billing.views.staff import bp


@dataclass(frozen=True)
class Section:
    """One part of the staff area: its title, page, what it is for, and who may open it."""

    title: str
    endpoint: str
    description: str
    roles: frozenset[StaffRole]

    def allows(self, role: StaffRole) -> bool:
        """Whether staff with ``role`` may open this section (admins may open every section)."""
        return role == StaffRole.ADMIN or role in self.roles


SECTIONS: tuple[Section, ...] = (
    Section(
        "Readers",
        "staff.readers",
        "Look a reader up by e-mail or name: account, trial, access, subscriptions.",
        frozenset({StaffRole.SUPPORT, StaffRole.FINANCE}),
    ),
    Section(
        "Groups",
        "staff.groups_list",
        "Organisations and their seats; approve the e-mail domains and office networks they claim.",
        frozenset({StaffRole.SUPPORT}),
    ),
    Section(
        "API clients",
        "staff.api_clients_list",
        "The content sites' API keys: create, rotate, revoke.",
        frozenset({StaffRole.ADMIN}),
    ),
)
"""Every staff section, in the order the home page lists them."""


@bp.get("/")
@guards.staff_required(StaffRole.SUPPORT, StaffRole.FINANCE)
def home() -> str:
    """The staff sections the logged-in staff member may open."""
    role = guards.reader().staff_role
    return render_template(
        "staff/home.html", sections=[s for s in SECTIONS if s.allows(role)], role=role
    )
