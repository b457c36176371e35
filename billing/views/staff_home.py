"""The sections of the staff area, listed on the staff home (``/staff/``, the dashboard in
:mod:`billing.views.staff_dashboard`) by the roles that may open them.

Every section is listed with the same roles its own guard allows (admins may open everything).
"""

from __future__ import annotations

from dataclasses import dataclass

from billing.models import StaffRole


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
        "Find a reader",
        "staff.support_find",
        "By e-mail, name, reader id or Stripe id: the decision, trial, invoices, mails; support actions.",
        frozenset({StaffRole.SUPPORT, StaffRole.FINANCE}),
    ),
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
        "Failed Stripe events",
        "staff.support_events",
        "Webhook events that failed or died, and replaying one.",
        frozenset({StaffRole.SUPPORT}),
    ),
    Section(
        "Reports and exports",
        "staff.reports_index",
        "Revenue, VAT (One-Stop-Shop), MRR, trials, churn, groups, dunning; CSV and XLSX.",
        frozenset({StaffRole.FINANCE}),
    ),
    Section(
        "Audit log",
        "staff.audit_page",
        "Who did what, when, from where: browse, filter, export.",
        frozenset({StaffRole.ADMIN}),
    ),
    Section(
        "API clients",
        "staff.api_clients_list",
        "The content sites' API keys: create, rotate, revoke.",
        frozenset({StaffRole.ADMIN}),
    ),
)
"""Every staff section, in the order the home page lists them."""
