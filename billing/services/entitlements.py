"""The one entitlement decision: may this reader read paywalled content, why, and until when.

Every view, the API, access tokens and reports ask :func:`decide`; nothing else looks at statuses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from billing.errors import Conflict
from billing.models import Group, Reader, Subscription, SubscriptionStatus
from billing.services.tokens import TokenSigner

DEFAULT_PAST_DUE_GRACE = timedelta(days=7)


class Reason(StrEnum):
    """Why access is granted or refused: a closed set, documented for the content site."""

    # granted
    SUBSCRIPTION = "subscription"
    TRIAL = "trial"
    GRACE_PERIOD = "grace_period"
    PAST_DUE_GRACE = "past_due_grace"
    GROUP_SEAT = "group_seat"
    GROUP_IP = "group_ip"
    COMPLIMENTARY = "complimentary"
    # refused
    NONE = "none"
    EMAIL_UNVERIFIED = "email_unverified"
    TRIAL_EXPIRED = "trial_expired"
    SUBSCRIPTION_ENDED = "subscription_ended"
    PAYMENT_FAILED = "payment_failed"
    SEAT_REMOVED = "seat_removed"


GRANTING_REASONS = frozenset(
    {
        Reason.SUBSCRIPTION,
        Reason.TRIAL,
        Reason.GRACE_PERIOD,
        Reason.PAST_DUE_GRACE,
        Reason.GROUP_SEAT,
        Reason.GROUP_IP,
        Reason.COMPLIMENTARY,
    }
)


@dataclass(frozen=True)
class Decision:
    """The answer: ``granted`` with its ``reason``; ``until`` is when it stops unless renewed."""

    granted: bool
    reason: Reason
    until: datetime | None = None
    plan: str | None = None
    group: str | None = None

    @classmethod
    def refused(cls, reason: Reason = Reason.NONE) -> Decision:
        """A refusal for ``reason``."""
        return cls(granted=False, reason=reason)


NetworkLookup = Callable[[str], Group | None]
"""The group whose approved office range holds an address, if any (see ``group_networks``)."""


def decide(
    reader: Reader | None,
    now: datetime,
    ip: str | None = None,
    *,
    past_due_grace: timedelta = DEFAULT_PAST_DUE_GRACE,
    networks: NetworkLookup | None = None,
) -> Decision:
    """Decide whether ``reader`` (or an anonymous visitor from ``ip``) may read at ``now``.

    Rules, first match wins:

    1. No reader: a visitor whose ``ip`` lies in an approved office range (``networks``) of a
       group whose subscription is valid at ``now``: ``group_ip``, naming the group, until the
       group's access ends (the same subscription rules as 3.); else refused, ``none``.
    2. A reader whose e-mail is not verified: refused, ``email_unverified``.
    3. An individual subscription that is valid at ``now``, best first:
       - ``active`` and not cancelled: ``subscription``, until the end of the paid period
         (when that end has passed and renewal is still being processed, until the end plus the
         past-due grace);
       - Stripe-side trial (``trialing``, trial end in the future): ``trial``, until the trial end;
       - cancelled at period end but paid until then: ``grace_period``, until the period end;
       - ``past_due`` less than ``past_due_grace`` after the payment first failed:
         ``past_due_grace``, until that grace ends.
       ``unpaid``, ``incomplete``, ``incomplete_expired``, ``paused`` and ``canceled`` grant nothing.
    4. A current seat (membership not removed) in a group whose subscription is valid by the rules
       of 3.: ``group_seat``, naming the group (of several, the one whose access lasts longest),
       until the group's access ends. A member keeps any access of their own (3., 5., 6.).
    5. A complimentary grant running at ``now``: ``complimentary``, until it expires.
    6. Our own card-less trial running at ``now``: ``trial``, until it ends.
    7. Otherwise refused, with the most telling reason: ``payment_failed`` (a subscription of the
       reader's own or of a group they hold a seat in past due beyond the grace, unpaid, or ``incomplete``: its first payment was declined and waits for
       another card), ``subscription_ended`` (a subscription that ended),
       ``seat_removed`` (a group seat was taken away), ``trial_expired`` (a trial that ran out),
       else ``none``.

    A granted decision always has ``until`` later than ``now``.
    """
    if reader is None:
        group = networks(ip) if networks is not None and ip is not None else None
        if group is not None:
            by_network = group_decision(group, now, past_due_grace, Reason.GROUP_IP)
            if by_network is not None:
                return by_network
        return Decision.refused(Reason.NONE)
    if not reader.is_verified:
        return Decision.refused(Reason.EMAIL_UNVERIFIED)

    subscriptions = sorted(reader.subscriptions, key=lambda s: s.current_period_end, reverse=True)
    granted = _best_subscription_decision(subscriptions, now, past_due_grace)
    if granted is not None:
        return granted

    seats = [m.group for m in reader.group_memberships if m.removed_at is None]
    by_seat = _longest(group_decision(g, now, past_due_grace, Reason.GROUP_SEAT) for g in seats)
    if by_seat is not None:
        return by_seat

    grants = [g for g in reader.grants if g.is_active(now)]
    if grants:
        longest = max(grants, key=lambda g: g.expires_at)
        return Decision(True, Reason.COMPLIMENTARY, until=longest.expires_at)

    trial = reader.trial
    if trial is not None and trial.is_active(now):
        return Decision(True, Reason.TRIAL, until=trial.ends_at)

    seat_subscriptions = [sub for g in seats for sub in g.subscriptions]
    return Decision.refused(_refusal_reason(reader, subscriptions, seat_subscriptions, now))


def _best_subscription_decision(
    subscriptions: list[Subscription], now: datetime, grace: timedelta
) -> Decision | None:
    candidates: list[Decision] = []
    for sub in subscriptions:
        if sub.has_ended(now):
            continue
        plan = sub.plan.code if sub.plan is not None else None
        if sub.is_active(now):
            until = sub.current_period_end
            if until <= now:
                until = sub.current_period_end + grace
            if until > now:
                candidates.append(Decision(True, Reason.SUBSCRIPTION, until, plan))
        elif sub.is_on_trial(now):
            candidates.append(Decision(True, Reason.TRIAL, sub.trial_end, plan))
        elif sub.is_on_grace_period(now):
            candidates.append(Decision(True, Reason.GRACE_PERIOD, sub.current_period_end, plan))
        elif sub.is_past_due_within_grace(now, grace):
            candidates.append(
                Decision(True, Reason.PAST_DUE_GRACE, sub.past_due_grace_ends(grace), plan)
            )
    if not candidates:
        return None
    order = [Reason.SUBSCRIPTION, Reason.TRIAL, Reason.GRACE_PERIOD, Reason.PAST_DUE_GRACE]
    return min(candidates, key=lambda d: order.index(d.reason))


def group_decision(
    group: Group, now: datetime, grace: timedelta, reason: Reason
) -> Decision | None:
    """What ``group``'s subscriptions give its members (``group_seat``) or its office networks
    (``group_ip``) at ``now``, naming the group; None when none of them is valid."""
    subscriptions = sorted(group.subscriptions, key=lambda s: s.current_period_end, reverse=True)
    granted = _best_subscription_decision(subscriptions, now, grace)
    if granted is None:
        return None
    return replace(granted, reason=reason, group=group.public_id)


def _longest(decisions: Iterable[Decision | None]) -> Decision | None:
    granted = [(d.until, d.group or "", d) for d in decisions if d is not None and d.until]
    return max(granted, key=lambda t: (t[0], t[1]))[2] if granted else None


def _refusal_reason(
    reader: Reader,
    subscriptions: list[Subscription],
    seat_subscriptions: list[Subscription],
    now: datetime,
) -> Reason:
    failing = {
        SubscriptionStatus.PAST_DUE,
        SubscriptionStatus.UNPAID,
        SubscriptionStatus.INCOMPLETE,
    }
    own_or_seat = [*subscriptions, *seat_subscriptions]
    if any(s.status in failing and not s.has_ended(now) for s in own_or_seat):
        return Reason.PAYMENT_FAILED
    if any(s.has_ended(now) or s.cancel_at_period_end for s in subscriptions):
        return Reason.SUBSCRIPTION_ENDED
    if any(m.removed_at is not None for m in reader.group_memberships):
        return Reason.SEAT_REMOVED
    if reader.trial is not None:
        return Reason.TRIAL_EXPIRED
    return Reason.NONE


class AccessRefused(Conflict):
    """The decision refuses access, so no token is issued: a token only ever grants."""

    code = "access_refused"

    def __init__(self, decision: Decision) -> None:
        super().__init__(
            f"This reader may not read now ({decision.reason.value}), so no token is issued.",
            field="reader_id",
        )
        self.decision = decision


def issue_token(
    signer: TokenSigner,
    decide_at: Callable[[datetime], Decision],
    *,
    reader_id: str | None,
    now: datetime,
) -> tuple[str, datetime, Decision]:
    """Sign the granting decision ``decide_at(now)`` into an access token: (token, expires, decision).

    Raises AccessRefused when the decision refuses. A token lives at least until the end of the
    second it is signed in, so a grant that ends within that second is judged as the decision
    taken a second later: the refusal it is about to become.
    """
    decision = decide_at(now)
    if (
        decision.granted
        and decision.until is not None
        and decision.until - now < timedelta(seconds=1)
    ):
        decision = decide_at(now + timedelta(seconds=1))
    if not decision.granted:
        raise AccessRefused(decision)
    token, expires_at = signer.issue(
        reader_id=reader_id,
        reason=decision.reason.value,
        plan=decision.plan,
        group_id=decision.group,
        until=decision.until,
        now=now,
    )
    return token, expires_at, decision
