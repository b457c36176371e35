"""Support tools (role ``support``; refunds need ``finance``; admins may do all): find a reader,
see everything about them on one page, and act for them, each action with a reason that goes
into the audit log. Failed Stripe events can be replayed from here too.

These routes join the staff blueprint (``/staff/support/...``, ``/staff/readers/<id>/...``).
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import DateField, RadioField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange

from billing import db
from billing.clock import current_clock
from billing.errors import Conflict, DomainError, ValidationFailed
from billing.models import (
    GroupMembership,
    Invoice,
    OutboxMessage,
    Reader,
    StaffRole,
    WebhookEvent,
    WebhookEventStatus,
)
from billing.services import accounts, mail, support
from billing.services.stripe_mirror import customer_of
from billing.views import guards
from billing.views.forms import CountField
from billing.views.staff import bp

SUPPORT_ROLES = (StaffRole.SUPPORT,)
SEARCH_MAX_LENGTH = 320
MAILS_SHOWN = 20


def _reason_field(field_id: str) -> TextAreaField:
    return TextAreaField(
        "Reason (for the audit log)",
        [
            DataRequired("Say why (it goes in the audit log)."),
            Length(max=support.REASON_MAX_LENGTH, message="Use at most 500 characters."),
        ],
        id=field_id,
    )


class ReasonForm(FlaskForm):
    """An action that needs only a reason."""

    reason = _reason_field("action-reason")


class ExtendTrialForm(FlaskForm):
    """Give a reader more free days."""

    days = CountField(
        "Extra days",
        [
            InputRequired("How many days?"),
            NumberRange(1, support.MAX_TRIAL_EXTENSION_DAYS, "Extend by 1 to 90 days."),
        ],
        default=7,
    )
    reason = _reason_field("extend-reason")


class GrantForm(FlaskForm):
    """Complimentary access until a day."""

    expires_on = DateField("Until (the day it ends)", [InputRequired("Until when?")])
    reason = _reason_field("grant-reason")


class CancelForm(FlaskForm):
    """Cancel the reader's subscription, now or at the end of the paid period."""

    when = RadioField(
        "When",
        choices=[
            SelectChoice("period_end", "At the end of the paid period"),
            SelectChoice("now", "Now (no refund)"),
        ],
        default="period_end",
        validators=[InputRequired("Choose when.")],
    )
    reason = _reason_field("cancel-reason")


class RefundForm(FlaskForm):
    """Refund part or all of an invoice."""

    amount = StringField("Amount to refund", [DataRequired("How much?"), Length(max=20)])
    reason = _reason_field("refund-reason")


def _reader_or_404(public_id: str) -> Reader:
    found = accounts.by_public_id(db.session(), public_id)
    if found is None:
        abort(404, "No reader has this id.")
    return found


def _acting(form: FlaskForm) -> support.Acting:
    return support.Acting(
        staff=guards.reader(),
        reason=support.check_reason(form.reason.data),
        ip=request.remote_addr,
    )


def _page(reader: Reader, status: int = 200, **forms: FlaskForm) -> ResponseReturnValue:
    session = db.session()
    now = current_clock().now()
    customer = customer_of(session, reader)
    invoices = (
        session.scalars(
            select(Invoice)
            .where(Invoice.customer_id == customer.id)
            .order_by(Invoice.created_at.desc())
        ).all()
        if customer is not None
        else []
    )
    mails = session.scalars(
        select(OutboxMessage)
        .where(OutboxMessage.to == reader.email)
        .order_by(OutboxMessage.created_at.desc(), OutboxMessage.id.desc())
        .limit(MAILS_SHOWN)
    ).all()
    memberships = session.scalars(
        select(GroupMembership).where(GroupMembership.reader_id == reader.id)
    ).all()
    context: dict[str, Any] = {
        "extend": ExtendTrialForm(formdata=None),
        "grant": GrantForm(formdata=None),
        "cancel": CancelForm(formdata=None),
        "mail_form": ReasonForm(formdata=None),
        "refund": RefundForm(formdata=None),
        **forms,
    }
    return (
        render_template(
            "staff/support/reader.html",
            reader=reader,
            decision=guards.decision_for(reader, now),
            now=now,
            invoices=invoices,
            mails=mails,
            memberships=memberships,
            subscriptions=sorted(reader.subscriptions, key=lambda s: s.created_at, reverse=True),
            grants=sorted(reader.grants, key=lambda g: g.starts_at, reverse=True),
            may_refund=guards.reader().staff_role in (StaffRole.FINANCE, StaffRole.ADMIN),
            **context,
        ),
        status,
    )


def _done(reader: Reader, message: str) -> ResponseReturnValue:
    db.session().commit()
    flash(message, "success")
    return redirect(url_for("staff.support_reader", public_id=reader.public_id))


def _refused(reader: Reader, name: str, form: FlaskForm, error: DomainError) -> ResponseReturnValue:
    db.session().rollback()
    field = getattr(form, error.field, None) if error.field else None
    if field is not None:
        field.errors = [*field.errors, error.message]
    else:
        form.form_errors.append(error.message)
    return _page(reader, error.status, **{name: form})


@bp.get("/support")
@guards.staff_required(StaffRole.SUPPORT, StaffRole.FINANCE)
def support_find() -> str:
    """Find a reader by e-mail, name, reader id or Stripe id (customer, subscription, invoice)."""
    q = request.args.get("q", "")[:SEARCH_MAX_LENGTH]
    found = support.find(db.session(), q)
    return render_template("staff/support/find.html", q=q.strip(), found=found)


@bp.get("/readers/<public_id>/support")
@guards.staff_required(StaffRole.SUPPORT, StaffRole.FINANCE)
def support_reader(public_id: str) -> ResponseReturnValue:
    """Everything about one reader and the actions support may take for them."""
    return _page(_reader_or_404(public_id))


@bp.post("/readers/<public_id>/trial")
@guards.staff_required(*SUPPORT_ROLES)
def support_extend_trial(public_id: str) -> ResponseReturnValue:
    """Extend the reader's trial by some days."""
    reader = _reader_or_404(public_id)
    form = ExtendTrialForm()
    if not form.validate_on_submit():
        return _page(reader, 400, extend=form)
    try:
        trial = support.extend_trial(
            db.session(), reader, form.days.data, _acting(form), now=current_clock().now()
        )
    except DomainError as error:
        return _refused(reader, "extend", form, error)
    return _done(reader, f"Trial extended: it now ends {trial.ends_at:%Y-%m-%d %H:%M} UTC.")


@bp.post("/readers/<public_id>/grants")
@guards.staff_required(*SUPPORT_ROLES)
def support_grant(public_id: str) -> ResponseReturnValue:
    """Grant complimentary access until the end of a day."""
    reader = _reader_or_404(public_id)
    form = GrantForm()
    if not form.validate_on_submit():
        return _page(reader, 400, grant=form)
    ends = datetime.combine(form.expires_on.data, time.max, tzinfo=UTC).replace(microsecond=0)
    try:
        support.grant_access(db.session(), reader, ends, _acting(form), now=current_clock().now())
    except DomainError as error:
        if error.field == "expires_at":
            error.field = "expires_on"
        return _refused(reader, "grant", form, error)
    return _done(reader, f"Complimentary access granted until {ends:%Y-%m-%d}.")


@bp.post("/readers/<public_id>/grants/<int:grant_id>/revoke")
@guards.staff_required(*SUPPORT_ROLES)
def support_revoke(public_id: str, grant_id: int) -> ResponseReturnValue:
    """Revoke a complimentary grant now."""
    reader = _reader_or_404(public_id)
    form = ReasonForm()
    if not form.validate_on_submit():
        return _page(reader, 400, mail_form=form)
    try:
        support.revoke_grant(
            db.session(), reader, grant_id, _acting(form), now=current_clock().now()
        )
    except DomainError as error:
        return _refused(reader, "mail_form", form, error)
    return _done(reader, "Complimentary access revoked.")


@bp.post("/readers/<public_id>/mail/<kind>")
@guards.staff_required(*SUPPORT_ROLES)
def support_mail(public_id: str, kind: str) -> ResponseReturnValue:
    """Resend the verification mail, or send a password-reset link (staff never set passwords)."""
    from billing.views.auth import absolute_url, duration, send_verification

    reader = _reader_or_404(public_id)
    form = ReasonForm()
    if kind not in ("verification", "password-reset"):
        abort(404, "There is no such mail.")
    if not form.validate_on_submit():
        return _page(reader, 400, mail_form=form)
    session, now = db.session(), current_clock().now()
    if kind == "verification":
        if reader.is_verified:
            return _refused(
                reader, "mail_form", form, Conflict("This address is verified already.")
            )
        send_verification(session, reader)
        action = "support.verification_sent"
    else:
        config = current_app.config
        token = accounts.reset_token(config["SECRET_KEYS"], reader, now)
        mail.send(
            session,
            reader.email,
            "password_reset",
            name=reader.name,
            link=absolute_url("auth.reset_password", token=token),
            valid_for=duration(int(config["PASSWORD_RESET_MAX_AGE"])),
        )
        action = "support.password_reset_sent"
    support.record_mail(session, reader, action, _acting(form), now=now)
    return _done(reader, f"Mail sent to {reader.email}.")


@bp.post("/readers/<public_id>/cancel")
@guards.staff_required(*SUPPORT_ROLES)
def support_cancel(public_id: str) -> ResponseReturnValue:
    """Cancel the reader's subscription, now or at the end of the paid period."""
    reader = _reader_or_404(public_id)
    form = CancelForm()
    if not form.validate_on_submit():
        return _page(reader, 400, cancel=form)
    gateway = current_app.extensions["stripe_gateway"]
    try:
        subscription = support.cancel_subscription(
            db.session(),
            gateway,
            reader,
            form.when.data == "period_end",
            _acting(form),
            now=current_clock().now(),
        )
    except DomainError as error:
        return _refused(reader, "cancel", form, error)
    return _done(
        reader,
        f"Subscription {subscription.public_id}: {subscription.status.value}"
        + (", cancels at period end." if subscription.cancel_at_period_end else "."),
    )


@bp.post("/readers/<public_id>/invoices/<int:invoice_id>/refund")
@guards.staff_required(StaffRole.FINANCE)
def support_refund(public_id: str, invoice_id: int) -> ResponseReturnValue:
    """Refund an invoice of the reader in full or in part (finance staff)."""
    reader = _reader_or_404(public_id)
    form = RefundForm()
    if not form.validate_on_submit():
        return _page(reader, 400, refund=form)
    try:
        amount = _minor_units(form.amount.data)
        support.refund_invoice(
            db.session(),
            current_app.extensions["stripe_gateway"],
            reader,
            invoice_id,
            amount,
            _acting(form),
            now=current_clock().now(),
        )
    except DomainError as error:
        return _refused(reader, "refund", form, error)
    return _done(reader, f"Refunded {amount / 100:.2f}.")


def _minor_units(text: str | None) -> int:
    try:
        value = Decimal((text or "").strip().replace(",", "."))
    except InvalidOperation:
        raise ValidationFailed("Give an amount such as 12.50.", field="amount") from None
    if not value.is_finite() or value <= 0 or value != value.quantize(Decimal("0.01")):
        raise ValidationFailed("Give an amount such as 12.50.", field="amount")
    return int(value * 100)


@bp.get("/support/events")
@guards.staff_required(*SUPPORT_ROLES)
def support_events() -> str:
    """Stripe events whose handling failed, each with its error and a replay button."""
    return render_template(
        "staff/support/events.html",
        events=support.troubled_events(db.session()),
        form=ReasonForm(formdata=None),
    )


@bp.post("/support/events/<int:event_id>/replay")
@guards.staff_required(*SUPPORT_ROLES)
def support_replay(event_id: int) -> ResponseReturnValue:
    """Handle a failed Stripe event again (as ``flask billing replay-events --id`` does)."""
    from billing.leases import RetryPolicy
    from billing.services import audit
    from billing.worker import replay, worker_name

    session = db.session()
    event = session.get(WebhookEvent, event_id)
    if event is None:
        abort(404, "No such event.")
    form = ReasonForm()
    if not form.validate_on_submit():
        return render_template(
            "staff/support/events.html", events=support.troubled_events(session), form=form
        ), 400
    reason = support.check_reason(form.reason.data)
    before = event.status.value
    session.rollback()
    outcome = replay(
        event_id,
        current_app.extensions["stripe_gateway"],
        policy=RetryPolicy.from_config(dict(current_app.config)),
        worker=f"support:{worker_name()}",
    )
    if outcome is None:
        abort(409, "A worker is handling this event right now; look again in a moment.")
    session.expire_all()
    after = session.get_one(WebhookEvent, event_id).status
    audit.record(
        session,
        now=current_clock().now(),
        actor=guards.reader(),
        action="support.event_replayed",
        target=event,
        details={
            "reason": reason,
            "before": {"status": before},
            "after": {"status": after.value},
            "outcome": outcome.value,
        },
        ip=request.remote_addr,
    )
    session.commit()
    ok = after != WebhookEventStatus.FAILED
    flash(f"Event {event.stripe_event_id}: {outcome.value}.", "success" if ok else "error")
    return redirect(url_for("staff.support_events"))
