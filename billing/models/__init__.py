"""Typed SQLAlchemy models, one module per aggregate; import from here."""

from billing.models.base import Base, new_public_id
from billing.models.enums import (
    BillingInterval,
    CollectionMethod,
    InvoiceStatus,
    MailStatus,
    MembershipRole,
    PlanKind,
    StaffRole,
    SubscriptionEventKind,
    SubscriptionStatus,
    TrialStatus,
    WebhookEventStatus,
)
from billing.models.grants import ComplimentaryGrant
from billing.models.groups import (
    Group,
    GroupDomain,
    GroupInvite,
    GroupIPRange,
    GroupIPSessions,
    GroupIPVisitor,
    GroupMembership,
)
from billing.models.ops import (
    ApiClient,
    AuditLog,
    EntitlementChange,
    OutboxMessage,
    WebhookEvent,
)
from billing.models.payments import (
    Customer,
    Dispute,
    Invoice,
    Refund,
    ScheduledSubscription,
    Subscription,
    SubscriptionEvent,
)
from billing.models.plans import Plan
from billing.models.readers import Reader, Trial
from billing.models.token_keys import TokenKey, TokenKeyState
from billing.models.vat import TaxRate

__all__ = [
    "ApiClient",
    "AuditLog",
    "Base",
    "BillingInterval",
    "CollectionMethod",
    "ComplimentaryGrant",
    "Customer",
    "Dispute",
    "EntitlementChange",
    "Group",
    "GroupDomain",
    "GroupIPRange",
    "GroupIPSessions",
    "GroupIPVisitor",
    "GroupInvite",
    "GroupMembership",
    "Invoice",
    "InvoiceStatus",
    "MailStatus",
    "MembershipRole",
    "OutboxMessage",
    "Plan",
    "PlanKind",
    "Reader",
    "Refund",
    "ScheduledSubscription",
    "StaffRole",
    "Subscription",
    "SubscriptionEvent",
    "SubscriptionEventKind",
    "SubscriptionStatus",
    "TaxRate",
    "TokenKey",
    "TokenKeyState",
    "Trial",
    "TrialStatus",
    "WebhookEvent",
    "WebhookEventStatus",
    "new_public_id",
]
