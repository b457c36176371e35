"""factory_boy factories for test data, bound to the test's session by the ``app`` fixture."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import factory
from sqlalchemy.orm import Session

from billing import models
from billing.services.accounts import canonical_email, hash_password

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
PASSWORD = "correct horse battery"
_PASSWORD_HASH = hash_password(PASSWORD)
_session: Session | None = None


def bind(session: Session | None) -> None:
    """Make factories write to ``session`` (``None`` unbinds)."""
    global _session
    _session = session


def _current_session() -> Session:
    assert _session is not None, "factories are used outside the app fixture"
    return _session


class _Base(factory.alchemy.SQLAlchemyModelFactory):
    class Meta:
        abstract = True
        sqlalchemy_session_factory = _current_session
        sqlalchemy_session_persistence = "commit"


class ReaderFactory(_Base):
    """A verified reader with the password ``PASSWORD``."""

    class Meta:
        model = models.Reader

    email = factory.Sequence(lambda n: f"reader{n}@example.org")
    email_canonical = factory.LazyAttribute(lambda o: canonical_email(o.email))
    name = factory.Sequence(lambda n: f"Reader {n}")
    country = "BE"
    password_hash = _PASSWORD_HASH
    email_verified_at = NOW - timedelta(days=30)
    created_at = NOW - timedelta(days=30)


class TrialFactory(_Base):
    """A trial that started at ``NOW`` and runs 14 days."""

    class Meta:
        model = models.Trial

    reader = factory.SubFactory(ReaderFactory)
    email_canonical = factory.LazyAttribute(lambda o: o.reader.email_canonical)
    status = models.TrialStatus.ACTIVE
    started_at = NOW
    ends_at = factory.LazyAttribute(lambda o: o.started_at + timedelta(days=14))


class PlanFactory(_Base):
    """The individual monthly plan at EUR 12.00."""

    class Meta:
        model = models.Plan
        sqlalchemy_get_or_create = ("code",)

    code = "individual-monthly"
    name = "Monthly"
    kind = models.PlanKind.INDIVIDUAL
    interval = models.BillingInterval.MONTH
    amount = 1200
    currency = "eur"
    stripe_price_id = factory.LazyAttribute(lambda o: f"price_{o.code}")


class CustomerFactory(_Base):
    """A Stripe customer mirror for a reader."""

    class Meta:
        model = models.Customer

    reader = factory.SubFactory(ReaderFactory)
    stripe_id = factory.Sequence(lambda n: f"cus_test{n}")
    email = factory.LazyAttribute(lambda o: o.reader.email)
    email_canonical = factory.LazyAttribute(lambda o: o.reader.email_canonical)
    country = "BE"
    created_at = NOW


class SubscriptionFactory(_Base):
    """An active monthly subscription paid from ``NOW`` for a month."""

    class Meta:
        model = models.Subscription

    customer = factory.SubFactory(CustomerFactory)
    reader = factory.LazyAttribute(lambda o: o.customer.reader)
    plan = factory.SubFactory(PlanFactory)
    stripe_id = factory.Sequence(lambda n: f"sub_test{n}")
    status = models.SubscriptionStatus.ACTIVE
    quantity = 1
    current_period_start = NOW
    current_period_end = NOW + timedelta(days=30)
    created_at = NOW
    updated_at = NOW


class GrantFactory(_Base):
    """A complimentary grant running from ``NOW`` for 90 days."""

    class Meta:
        model = models.ComplimentaryGrant

    reader = factory.SubFactory(ReaderFactory)
    reason = "press"
    starts_at = NOW
    expires_at = NOW + timedelta(days=90)
    created_at = NOW


def reader(**kwargs: Any) -> models.Reader:
    """Shorthand for ``ReaderFactory(**kwargs)``."""
    return ReaderFactory(**kwargs)  # type: ignore[no-any-return]


class InvoiceFactory(_Base):
    """A paid EUR 12.00 invoice (VAT 21 % included: 2.08) of a subscription, issued at ``NOW``."""

    class Meta:
        model = models.Invoice

    subscription = factory.SubFactory(SubscriptionFactory)
    customer_id = factory.LazyAttribute(lambda o: o.subscription.customer_id)
    subscription_id = factory.LazyAttribute(lambda o: o.subscription.id)
    stripe_id = factory.Sequence(lambda n: f"in_test{n}")
    number = factory.Sequence(lambda n: f"TG-{n:06d}")
    status = models.InvoiceStatus.PAID
    currency = "eur"
    total = 1200
    tax = 208
    subtotal = factory.LazyAttribute(lambda o: o.total)
    amount_paid = factory.LazyAttribute(lambda o: o.total)
    customer_country = "BE"
    created_at = NOW
    paid_at = factory.LazyAttribute(lambda o: o.created_at)

    @classmethod
    def _adjust_kwargs(cls, **kwargs: Any) -> dict[str, Any]:
        kwargs.pop("subscription", None)
        return kwargs


class GroupFactory(_Base):
    """An organisation in Belgium."""

    class Meta:
        model = models.Group

    name = factory.Sequence(lambda n: f"Organisation {n}")
    billing_email = factory.Sequence(lambda n: f"billing{n}@org{n}.example")
    country = "BE"
    created_at = NOW
    admins_take_seat = True


def group_with_seats(seats: int, *, admin: models.Reader | None = None) -> models.Group:
    """A group with an active yearly subscription of ``seats`` seats and ``admin`` (a new verified
    reader unless given) as its admin, taking a seat."""
    group = GroupFactory()
    customer = CustomerFactory(
        reader=None,
        group_id=group.id,
        email=group.billing_email,
        email_canonical=group.billing_email,
    )
    plan = PlanFactory(
        code=f"group-seat-{group.name}",
        kind=models.PlanKind.GROUP,
        interval=models.BillingInterval.YEAR,
        amount=9600,
    )
    SubscriptionFactory(
        customer=customer,
        reader=None,
        group_id=group.id,
        plan=plan,
        quantity=seats,
        current_period_end=NOW + timedelta(days=365),
    )
    models_admin = admin or reader()
    _current_session().add(
        models.GroupMembership(
            group_id=group.id,
            reader_id=models_admin.id,
            role=models.MembershipRole.ADMIN,
            joined_at=NOW,
        )
    )
    _current_session().flush()
    return group
