"""Group subscriptions: organisations buy seats, invite colleagues, allow domains and networks.

One module per idea, all reachable from here (callers use ``groups.<name>``):

- :mod:`~billing.services.groups_seats`: the group, its members and admins, claiming a seat.
  Seats are never oversold: every claim and every change of the seat count locks the group's
  subscription row before counting.
- :mod:`~billing.services.groups_billing`: buying seats by card or invoice, the seat count at
  Stripe's prorated price, cancelling or renewing, invoices paid by bank transfer.
- :mod:`~billing.services.groups_invites`: signed, single-use invitations bound to an address,
  stored only as a SHA-256.
- :mod:`~billing.services.groups_claims`: e-mail domains and office networks, which take effect
  once staff approve them.
- :mod:`~billing.services.groups_idle`: idle seats, reclaimed by the admin or by ``tick``.
"""

from __future__ import annotations

from billing.models import GroupDomain as GroupDomain  # reachable here as before the split
from billing.services.groups_billing import (
    PRORATION_DATE_MAX_AGE,
    SEAT_CHANGE_SALT,
    Quote,
    SeatChangeConfirmation,
    SeatQuote,
    card_setup,
    change_seats,
    confirmed_seat_change,
    create_group,
    invoices_to_watch,
    mail_payment_problem,
    quote,
    seat_change_price,
    seat_change_token,
    seat_plan,
    set_renewal,
    simulate_bank_transfer,
    subscribe_by_card,
    watch_invoice,
)
from billing.services.groups_claims import (
    WEBMAIL_DOMAINS,
    add_domain,
    add_ip_range,
    clean_domain,
    decide_domain,
    decide_ip_range,
    join_by_domain,
    joinable_groups,
    pending_approvals,
    remove_domain,
    remove_ip_range,
    staff_add_private_range,
)
from billing.services.groups_idle import (
    IDLE_WARNING,
    groups_reclaiming,
    idle_members,
    note_reading,
    reclaim_idle_automatically,
    reclaim_idle_seat,
    set_auto_reclaim,
)
from billing.services.groups_invites import (
    INVITE_SALT,
    MAX_INVITES_AT_ONCE,
    InvalidInvite,
    InviteReport,
    accept_invite,
    invite,
    invite_for_token,
    pending_invites,
    resend_invite,
    revoke_invite,
)
from billing.services.groups_invites import (
    _new_token as _new_token,  # the tests sign links of their own
)
from billing.services.groups_seats import (
    GroupRules,
    NoSeatsLeft,
    admins_of,
    by_public_id,
    claim_seat,
    current_subscription,
    groups_of,
    lock_seats,
    members,
    remove_member,
    require_admin,
    seat_count,
    seats_in_use,
    set_admin,
    set_admins_take_seat,
)

__all__ = [
    "IDLE_WARNING",
    "INVITE_SALT",
    "MAX_INVITES_AT_ONCE",
    "PRORATION_DATE_MAX_AGE",
    "SEAT_CHANGE_SALT",
    "WEBMAIL_DOMAINS",
    "GroupRules",
    "InvalidInvite",
    "InviteReport",
    "NoSeatsLeft",
    "Quote",
    "SeatChangeConfirmation",
    "SeatQuote",
    "accept_invite",
    "add_domain",
    "add_ip_range",
    "admins_of",
    "by_public_id",
    "card_setup",
    "change_seats",
    "claim_seat",
    "clean_domain",
    "confirmed_seat_change",
    "create_group",
    "current_subscription",
    "decide_domain",
    "decide_ip_range",
    "groups_of",
    "groups_reclaiming",
    "idle_members",
    "invite",
    "invite_for_token",
    "invoices_to_watch",
    "join_by_domain",
    "joinable_groups",
    "lock_seats",
    "mail_payment_problem",
    "members",
    "note_reading",
    "pending_approvals",
    "pending_invites",
    "quote",
    "reclaim_idle_automatically",
    "reclaim_idle_seat",
    "remove_domain",
    "remove_ip_range",
    "remove_member",
    "require_admin",
    "resend_invite",
    "revoke_invite",
    "seat_change_price",
    "seat_change_token",
    "seat_count",
    "seat_plan",
    "seats_in_use",
    "set_admin",
    "set_admins_take_seat",
    "set_auto_reclaim",
    "set_renewal",
    "simulate_bank_transfer",
    "staff_add_private_range",
    "subscribe_by_card",
    "watch_invoice",
]
