"""the whole data model

Revision ID: 0001
Revises:
Create Date: 2026-11-25 02:16:14.896911
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import billing.models.base

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dev_outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sent_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("to", sa.String(length=320), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dev_outbox")),
    )
    with op.batch_alter_table("dev_outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dev_outbox_sent_at"), ["sent_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_dev_outbox_to"), ["to"], unique=False)

    op.create_table(
        "groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("billing_email", sa.String(length=320), nullable=False),
        sa.Column("vat_id", sa.String(length=32), nullable=True),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("length(country) = 2", name=op.f("ck_groups_country_iso2")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_groups")),
        sa.UniqueConstraint("public_id", name=op.f("uq_groups_public_id")),
    )
    op.create_table(
        "plans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "individual",
                "group",
                name="plan_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "interval",
            sa.Enum(
                "month",
                "year",
                name="plan_interval",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("stripe_product_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_price_id", sa.String(length=255), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_plans_amount_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
        sa.UniqueConstraint("code", name=op.f("uq_plans_code")),
        sa.UniqueConstraint("stripe_price_id", name=op.f("uq_plans_stripe_price_id")),
    )
    op.create_table(
        "readers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("email_canonical", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("session_token", sa.String(length=64), nullable=False),
        sa.Column(
            "email_verified_at", billing.models.base.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column(
            "staff_role",
            sa.Enum(
                "none",
                "support",
                "finance",
                "admin",
                name="staff_role",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("length(country) = 2", name=op.f("ck_readers_country_iso2")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_readers")),
        sa.UniqueConstraint("email", name=op.f("uq_readers_email")),
        sa.UniqueConstraint("public_id", name=op.f("uq_readers_public_id")),
        sa.UniqueConstraint("session_token", name=op.f("uq_readers_session_token")),
    )
    with op.batch_alter_table("readers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_readers_email_canonical"), ["email_canonical"], unique=False
        )

    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stripe_event_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=128), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column(
            "stripe_created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("received_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "received",
                "processed",
                "failed",
                "ignored",
                name="webhook_event_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("processed_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("stripe_event_id", name=op.f("uq_webhook_events_stripe_event_id")),
    )
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_events_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_webhook_events_type"), ["type"], unique=False)

    op.create_table(
        "api_clients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("key_prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=128), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("allowed_origins", sa.JSON(), nullable=False),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("last_used_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["readers.id"],
            name=op.f("fk_api_clients_created_by_id_readers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_clients")),
        sa.UniqueConstraint("key_prefix", name=op.f("uq_api_clients_key_prefix")),
        sa.UniqueConstraint("public_id", name=op.f("uq_api_clients_public_id")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("occurred_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("actor_label", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=64), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["actor_id"],
            ["readers.id"],
            name=op.f("fk_audit_log_actor_id_readers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_occurred_at"), ["occurred_at"], unique=False)

    op.create_table(
        "complimentary_grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("granted_by_id", sa.Integer(), nullable=True),
        sa.Column("starts_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "expires_at > starts_at", name=op.f("ck_complimentary_grants_expires_after_start")
        ),
        sa.ForeignKeyConstraint(
            ["granted_by_id"],
            ["readers.id"],
            name=op.f("fk_complimentary_grants_granted_by_id_readers"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["reader_id"],
            ["readers.id"],
            name=op.f("fk_complimentary_grants_reader_id_readers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_complimentary_grants")),
    )
    with op.batch_alter_table("complimentary_grants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_complimentary_grants_reader_id"), ["reader_id"], unique=False
        )

    op.create_table(
        "customers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stripe_id", sa.String(length=255), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("email_canonical", sa.String(length=320), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("vat_id", sa.String(length=32), nullable=True),
        sa.Column("card_brand", sa.String(length=32), nullable=True),
        sa.Column("card_last4", sa.String(length=4), nullable=True),
        sa.Column("default_payment_method_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "NOT (reader_id IS NOT NULL AND group_id IS NOT NULL)",
            name=op.f("ck_customers_one_owner"),
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_customers_group_id_groups"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["reader_id"],
            ["readers.id"],
            name=op.f("fk_customers_reader_id_readers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
        sa.UniqueConstraint("group_id", name=op.f("uq_customers_group_id")),
        sa.UniqueConstraint("reader_id", name=op.f("uq_customers_reader_id")),
        sa.UniqueConstraint("stripe_id", name=op.f("uq_customers_stripe_id")),
    )
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_customers_email_canonical"), ["email_canonical"], unique=False
        )

    op.create_table(
        "group_domains",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_group_domains_group_id_groups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_group_domains")),
        sa.UniqueConstraint("domain", name=op.f("uq_group_domains_domain")),
    )
    with op.batch_alter_table("group_domains", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_group_domains_group_id"), ["group_id"], unique=False)

    op.create_table(
        "group_invites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("invited_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("accepted_by_id", sa.Integer(), nullable=True),
        sa.Column("revoked_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "expires_at > created_at", name=op.f("ck_group_invites_expires_after_creation")
        ),
        sa.ForeignKeyConstraint(
            ["accepted_by_id"],
            ["readers.id"],
            name=op.f("fk_group_invites_accepted_by_id_readers"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_group_invites_group_id_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["invited_by_id"],
            ["readers.id"],
            name=op.f("fk_group_invites_invited_by_id_readers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_group_invites")),
        sa.UniqueConstraint("public_id", name=op.f("uq_group_invites_public_id")),
    )
    with op.batch_alter_table("group_invites", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_group_invites_group_id"), ["group_id"], unique=False)

    op.create_table(
        "group_ip_ranges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("cidr", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_group_ip_ranges_group_id_groups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_group_ip_ranges")),
        sa.UniqueConstraint("group_id", "cidr", name=op.f("uq_group_ip_ranges_group_id_cidr")),
    )
    with op.batch_alter_table("group_ip_ranges", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_group_ip_ranges_group_id"), ["group_id"], unique=False)

    op.create_table(
        "group_memberships",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=False),
        sa.Column(
            "role",
            sa.Enum(
                "admin",
                "member",
                name="membership_role",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("joined_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("removed_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_group_memberships_group_id_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["reader_id"],
            ["readers.id"],
            name=op.f("fk_group_memberships_reader_id_readers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_group_memberships")),
        sa.UniqueConstraint(
            "group_id", "reader_id", name=op.f("uq_group_memberships_group_id_reader_id")
        ),
    )
    with op.batch_alter_table("group_memberships", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_group_memberships_group_id"), ["group_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_group_memberships_reader_id"), ["reader_id"], unique=False
        )

    op.create_table(
        "trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=True),
        sa.Column("email_canonical", sa.String(length=320), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "active",
                "converted",
                "expired",
                name="trial_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("started_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ends_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("converted_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "reminder_sent_at", billing.models.base.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column(
            "ended_mail_sent_at", billing.models.base.UTCDateTime(timezone=True), nullable=True
        ),
        sa.CheckConstraint("ends_at > started_at", name=op.f("ck_trials_ends_after_start")),
        sa.ForeignKeyConstraint(
            ["reader_id"],
            ["readers.id"],
            name=op.f("fk_trials_reader_id_readers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trials")),
        sa.UniqueConstraint("email_canonical", name=op.f("uq_trials_email_canonical")),
        sa.UniqueConstraint("reader_id", name=op.f("uq_trials_reader_id")),
    )
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.create_index("ix_trials_status_ends_at", ["status", "ends_at"], unique=False)

    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("stripe_id", sa.String(length=255), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "trialing",
                "active",
                "past_due",
                "unpaid",
                "canceled",
                "incomplete",
                "incomplete_expired",
                "paused",
                name="subscription_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column(
            "current_period_start", billing.models.base.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column(
            "current_period_end", billing.models.base.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("canceled_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("trial_end", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("past_due_since", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "collection_method",
            sa.Enum(
                "charge_automatically",
                "send_invoice",
                name="collection_method",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("last_stripe_event_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "NOT (reader_id IS NOT NULL AND group_id IS NOT NULL)",
            name=op.f("ck_subscriptions_one_owner"),
        ),
        sa.CheckConstraint(
            "current_period_end >= current_period_start",
            name=op.f("ck_subscriptions_period_ordered"),
        ),
        sa.CheckConstraint("quantity >= 1", name=op.f("ck_subscriptions_quantity_positive")),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_subscriptions_customer_id_customers")
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_subscriptions_group_id_groups"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_subscriptions_plan_id_plans")
        ),
        sa.ForeignKeyConstraint(
            ["reader_id"],
            ["readers.id"],
            name=op.f("fk_subscriptions_reader_id_readers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint("public_id", name=op.f("uq_subscriptions_public_id")),
        sa.UniqueConstraint("stripe_id", name=op.f("uq_subscriptions_stripe_id")),
    )
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_subscriptions_customer_id"), ["customer_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_subscriptions_group_id"), ["group_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_subscriptions_reader_id"), ["reader_id"], unique=False)
        batch_op.create_index("ix_subscriptions_status", ["status"], unique=False)

    op.create_table(
        "invoices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stripe_id", sa.String(length=255), nullable=False),
        sa.Column("number", sa.String(length=64), nullable=True),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.Integer(), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "draft",
                "open",
                "paid",
                "uncollectible",
                "void",
                name="invoice_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("subtotal", sa.Integer(), nullable=False),
        sa.Column("tax", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("amount_paid", sa.Integer(), nullable=False),
        sa.Column("amount_refunded", sa.Integer(), nullable=False),
        sa.Column("customer_country", sa.String(length=2), nullable=True),
        sa.Column("customer_vat_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("paid_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("hosted_invoice_url", sa.String(length=1000), nullable=True),
        sa.Column("invoice_pdf_url", sa.String(length=1000), nullable=True),
        sa.CheckConstraint("amount_paid >= 0", name=op.f("ck_invoices_paid_not_negative")),
        sa.CheckConstraint(
            "amount_refunded >= 0 AND amount_refunded <= amount_paid",
            name=op.f("ck_invoices_refund_within_paid"),
        ),
        sa.CheckConstraint("tax >= 0", name=op.f("ck_invoices_tax_not_negative")),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_invoices_customer_id_customers")
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_invoices_subscription_id_subscriptions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
        sa.UniqueConstraint("stripe_id", name=op.f("uq_invoices_stripe_id")),
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_invoices_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_invoices_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_invoices_subscription_id"), ["subscription_id"], unique=False
        )

    op.create_table(
        "subscription_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "created",
                "trial_started",
                "converted",
                "renewed",
                "upgraded",
                "downgraded",
                "seats_changed",
                "past_due",
                "recovered",
                "cancelled",
                "reactivated",
                "ended",
                "refunded",
                name="subscription_event_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("occurred_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("mrr_before", sa.Integer(), nullable=False),
        sa.Column("mrr_after", sa.Integer(), nullable=False),
        sa.Column("mrr_delta", sa.Integer(), nullable=False),
        sa.Column("stripe_event_id", sa.String(length=255), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "mrr_before >= 0 AND mrr_after >= 0",
            name=op.f("ck_subscription_events_mrr_not_negative"),
        ),
        sa.CheckConstraint(
            "mrr_delta = mrr_after - mrr_before",
            name=op.f("ck_subscription_events_delta_consistent"),
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_subscription_events_subscription_id_subscriptions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_events")),
    )
    with op.batch_alter_table("subscription_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_subscription_events_occurred_at"), ["occurred_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_subscription_events_subscription_id"), ["subscription_id"], unique=False
        )

    op.create_table(
        "disputes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stripe_id", sa.String(length=255), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=True),
        sa.Column("stripe_charge_id", sa.String(length=255), nullable=True),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_at", billing.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("amount > 0", name=op.f("ck_disputes_amount_positive")),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_disputes_invoice_id_invoices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disputes")),
        sa.UniqueConstraint("stripe_id", name=op.f("uq_disputes_stripe_id")),
    )
    with op.batch_alter_table("disputes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_disputes_invoice_id"), ["invoice_id"], unique=False)

    op.create_table(
        "refunds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stripe_id", sa.String(length=255), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=True),
        sa.Column("stripe_charge_id", sa.String(length=255), nullable=True),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("created_at", billing.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_refunds_amount_positive")),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_refunds_invoice_id_invoices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
        sa.UniqueConstraint("stripe_id", name=op.f("uq_refunds_stripe_id")),
    )
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_refunds_invoice_id"), ["invoice_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_refunds_invoice_id"))

    op.drop_table("refunds")
    with op.batch_alter_table("disputes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_disputes_invoice_id"))

    op.drop_table("disputes")
    with op.batch_alter_table("subscription_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscription_events_subscription_id"))
        batch_op.drop_index(batch_op.f("ix_subscription_events_occurred_at"))

    op.drop_table("subscription_events")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoices_subscription_id"))
        batch_op.drop_index(batch_op.f("ix_invoices_customer_id"))
        batch_op.drop_index(batch_op.f("ix_invoices_created_at"))

    op.drop_table("invoices")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_index("ix_subscriptions_status")
        batch_op.drop_index(batch_op.f("ix_subscriptions_reader_id"))
        batch_op.drop_index(batch_op.f("ix_subscriptions_group_id"))
        batch_op.drop_index(batch_op.f("ix_subscriptions_customer_id"))

    op.drop_table("subscriptions")
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.drop_index("ix_trials_status_ends_at")

    op.drop_table("trials")
    with op.batch_alter_table("group_memberships", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_group_memberships_reader_id"))
        batch_op.drop_index(batch_op.f("ix_group_memberships_group_id"))

    op.drop_table("group_memberships")
    with op.batch_alter_table("group_ip_ranges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_group_ip_ranges_group_id"))

    op.drop_table("group_ip_ranges")
    with op.batch_alter_table("group_invites", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_group_invites_group_id"))

    op.drop_table("group_invites")
    with op.batch_alter_table("group_domains", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_group_domains_group_id"))

    op.drop_table("group_domains")
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_customers_email_canonical"))

    op.drop_table("customers")
    with op.batch_alter_table("complimentary_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_complimentary_grants_reader_id"))

    op.drop_table("complimentary_grants")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_occurred_at"))
        batch_op.drop_index(batch_op.f("ix_audit_log_action"))

    op.drop_table("audit_log")
    op.drop_table("api_clients")
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_events_type"))
        batch_op.drop_index(batch_op.f("ix_webhook_events_status"))

    op.drop_table("webhook_events")
    with op.batch_alter_table("readers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_readers_email_canonical"))

    op.drop_table("readers")
    op.drop_table("plans")
    op.drop_table("groups")
    with op.batch_alter_table("dev_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dev_outbox_to"))
        batch_op.drop_index(batch_op.f("ix_dev_outbox_sent_at"))

    op.drop_table("dev_outbox")
