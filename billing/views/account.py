"""The reader's own pages: account overview, trial start, password and e-mail changes, deletion."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import login_required, login_user, logout_user
from sqlalchemy import inspect

from billing import db
from billing.clock import current_clock
from billing.errors import DomainError
from billing.extensions import limiter
from billing.models import TrialStatus
from billing.services import accounts, audit, mail, notices, privacy, reader_country, taxes, trials
from billing.services.entitlements import Reason
from billing.services.vat import TaxKind, plain_rate
from billing.views import guards
from billing.views.auth import absolute_url, duration
from billing.views.forms import (
    COUNTRY_NAMES,
    ButtonForm,
    CountryChangeForm,
    DeleteAccountForm,
    EmailChangeForm,
    PasswordChangeForm,
    render_form,
    render_refused,
)
from billing.views.payments import subscription_context

bp = Blueprint("account", __name__)

REASON_WORDS: dict[Reason, str] = {
    Reason.SUBSCRIPTION: "subscription",
    Reason.TRIAL: "trial",
    Reason.GRACE_PERIOD: "cancelled subscription, paid to the end of the period",
    Reason.PAST_DUE_GRACE: "subscription with a failed payment, in its grace period",
    Reason.GROUP_SEAT: "group subscription",
    Reason.GROUP_IP: "your organisation's network",
    Reason.COMPLIMENTARY: "complimentary access",
    Reason.NONE: "no subscription",
    Reason.EMAIL_UNVERIFIED: "your e-mail address is not verified yet",
    Reason.TRIAL_EXPIRED: "your free trial has ended",
    Reason.SUBSCRIPTION_ENDED: "your subscription has ended",
    Reason.PAYMENT_FAILED: "the payment failed",
    Reason.SEAT_REMOVED: "your group seat was removed",
}
"""How each entitlement reason reads on the account page."""


def long_date(moment: datetime) -> str:
    """A date as readers write it: ``9 December 2026``."""
    return f"{moment.day} {moment:%B %Y}"


def days_left_text(days: int) -> str:
    """``14 days left``, ``1 day left``."""
    return "1 day left" if days == 1 else f"{days} days left"


@bp.get("/account")
@login_required
def overview() -> ResponseReturnValue:
    """Who the reader is, their trial, and whether they may read (the entitlement decision)."""
    reader = guards.reader()
    now = current_clock().now()
    decision = guards.decision_for(reader, now)
    own_trial = reader.trial
    days_left = None
    if own_trial is None:
        trial_state = "none"
    elif own_trial.is_active(now):
        trial_state = "active"
        days_left = days_left_text(own_trial.days_left(now))
    elif own_trial.status == TrialStatus.CONVERTED:
        trial_state = "converted"
    else:
        trial_state = "ended"
    country_code = reader_country.lives_in(db.session(), reader)
    return render_template(
        "account/overview.html",
        reader=reader,
        country_code=country_code,
        country_name=COUNTRY_NAMES.get(country_code, country_code),
        trial=own_trial,
        trial_state=trial_state,
        days_left=days_left,
        decision=decision,
        reason_words=REASON_WORDS.get(decision.reason, str(decision.reason)),
        until=long_date(decision.until) if decision.until else None,
        long_date=long_date,
        form=ButtonForm(),
        trial_available=trial_state == "none"
        and trials.refusal_reason(db.session(), reader) is None,
        **subscription_context(reader, now),
    )


@bp.route("/trial", methods=["GET", "POST"])
@login_required
@limiter.limit(lambda: current_app.config["RATELIMIT_TRIAL"], methods=["POST"])
def trial() -> ResponseReturnValue:
    """Offer the card-less free trial, or say why it is not available; POST starts it."""
    reader = guards.reader()
    session = db.session()
    days = int(current_app.config["TRIAL_DAYS"])
    form = ButtonForm()
    if request.method == "GET":
        reason = trials.refusal_reason(session, reader)
        return render_template("account/trial.html", form=form, days=days, reason=reason)
    if not form.validate_on_submit():
        return render_template("account/trial.html", form=form, days=days, reason=None), 400
    now = current_clock().now()
    try:
        started = trials.start_trial(session, reader, now=now, days=days)
    except (trials.EmailNotVerified, trials.TrialRefused) as error:
        return render_template(
            "account/trial.html", form=form, days=days, reason=error.message, refused=True
        ), error.status
    audit.record(
        session,
        now=now,
        actor=reader,
        action="trial.started",
        target=started,
        details={"ends_at": started.ends_at.isoformat()},
        ip=request.remote_addr,
    )
    session.commit()
    flash("Your free trial has started.", "success")
    return redirect(guards.safe_next(request.args.get("next"), url_for("account.overview")))


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def password() -> ResponseReturnValue:
    """Change the password; every other session of the reader ends, this one stays."""
    form = PasswordChangeForm()
    if not form.validate_on_submit():
        return render_form("account/password.html", form)
    reader = guards.reader()
    session = db.session()
    try:
        accounts.change_password(
            reader, current=form.current_password.data, new=form.new_password.data
        )
    except DomainError as error:
        return render_refused("account/password.html", form, error)
    audit.record(
        session,
        now=current_clock().now(),
        actor=reader,
        action="account.password_changed",
        target=reader,
        ip=request.remote_addr,
    )
    notices.password_changed(session, reader, now=current_clock().now())
    session.commit()
    login_user(reader)
    flash(
        "Your password is changed. Any other device you were logged in on is logged out.", "success"
    )
    return redirect(url_for("account.overview"))


@bp.route("/account/email", methods=["GET", "POST"])
@login_required
def email() -> ResponseReturnValue:
    """Ask to move the account to a new address: a confirmation link goes to that address."""
    form = EmailChangeForm()
    if not form.validate_on_submit():
        return render_form("account/email.html", form)
    reader = guards.reader()
    session = db.session()
    config = current_app.config
    try:
        new_email = accounts.request_email_change(
            reader, password=form.password.data, new_email=form.new_email.data
        )
    except DomainError as error:
        return render_refused("account/email.html", form, error)
    token = accounts.change_email_token(
        config["SECRET_KEYS"], reader, new_email, current_clock().now()
    )
    mail.send(
        session,
        new_email,
        "change_email",
        name=reader.name,
        old_email=reader.email,
        link=absolute_url("account.confirm_email", token=token),
        valid_for=duration(int(config["EMAIL_VERIFY_MAX_AGE"])),
    )
    session.commit()
    flash(
        f"We sent a confirmation link to {new_email}. Your address changes when you open it.",
        "success",
    )
    return redirect(url_for("account.overview"))


@bp.get("/account/email/confirm")
def confirm_email() -> ResponseReturnValue:
    """Apply an e-mail change from the link mailed to the new address (the link is the proof)."""
    config = current_app.config
    session = db.session()
    now = current_clock().now()
    try:
        reader = accounts.confirm_email_change(
            session,
            config["SECRET_KEYS"],
            request.args.get("token", ""),
            now=now,
            max_age=int(config["EMAIL_VERIFY_MAX_AGE"]),
        )
    except DomainError as error:
        return render_template("account/email_failed.html", message=error.message), error.status
    old = inspect(reader).attrs.email.history.deleted
    audit.record(
        session,
        now=now,
        actor=reader,
        action="account.email_changed",
        target=reader,
        details={"old": old[0] if old else None, "new": reader.email},
        ip=request.remote_addr,
    )
    if old and old[0] != reader.email:
        notices.email_changed(session, reader, old_email=old[0], now=now)
    session.commit()
    flash(f"Your e-mail address is now {reader.email}.", "success")
    return redirect(url_for("account.overview"))


def vat_words(country: str, rate: Decimal, kind: TaxKind) -> str:
    """The VAT a reader's price includes in ``country``: ``France's VAT of 2.1 %``."""
    name = COUNTRY_NAMES.get(country, country)
    if rate == 0:
        return f"no VAT ({name})"
    if kind == TaxKind.OUTSIDE_EU:
        return f"VAT of {plain_rate(rate)} % (readers outside the EU, {name})"
    return f"{name}'s VAT of {plain_rate(rate)} %"


def _country_change_message(change: reader_country.CountryChange) -> str:
    name = COUNTRY_NAMES.get(change.after, change.after)
    if not change.changed:
        return f"You already live in {name} for us: nothing changed."
    after = vat_words(change.after, change.rate_after, change.kind_after)
    if change.applies_from is None:
        when = f"Invoices from now on include {after}."
    else:
        before = change.rate_before if change.rate_before is not None else Decimal(0)
        instead = "" if before == change.rate_after else f" instead of {plain_rate(before)} %"
        when = (
            f"From your next invoice, on {long_date(change.applies_from)}, your price includes "
            f"{after}{instead}; the price itself stays the same."
        )
    return f"Your country is now {name}. {when} Invoices already issued keep their VAT."


@bp.route("/account/country", methods=["GET", "POST"])
@login_required
def country() -> ResponseReturnValue:
    """Change the country the reader lives in: the VAT of their next invoices follows it (asking
    them to confirm it when their card was issued elsewhere)."""
    reader = guards.reader()
    session = db.session()
    now = current_clock().now()
    settings = taxes.current_settings()
    current = reader_country.country_now(session, reader, now=now, settings=settings)
    form = CountryChangeForm()
    context: dict[str, Any] = {
        "current": current,
        "current_name": COUNTRY_NAMES.get(current.country, current.country),
        "current_vat": vat_words(current.country, current.rate, current.kind),
        "card_name": COUNTRY_NAMES.get(current.card_country or "", current.card_country),
        "unconfirmed": False,
    }
    if request.method == "GET":
        form.country.data = current.country
    if not form.validate_on_submit():
        return render_form("account/country.html", form, **context)
    try:
        change = reader_country.change_country(
            session,
            current_app.extensions["stripe_gateway"],
            reader,
            form.country.data,
            confirmed=bool(form.confirm.data),
            now=now,
            settings=settings,
        )
    except taxes.CountryUnconfirmed as unconfirmed:
        session.rollback()
        form.confirm.errors = [
            f"Your card was issued in {context['card_name']}. VAT is charged where you live: "
            f"tick the box to confirm you live in {COUNTRY_NAMES.get(form.country.data)}."
        ]
        context["unconfirmed"] = True
        return render_form("account/country.html", form, unconfirmed.status, **context)
    except DomainError as error:
        session.rollback()
        return render_refused("account/country.html", form, error, **context)
    session.commit()
    flash(_country_change_message(change), "success" if change.changed else "info")
    return redirect(url_for("account.overview"))


@bp.route("/account/delete", methods=["GET", "POST"])
@login_required
def delete() -> ResponseReturnValue:
    """Delete the account after the password is confirmed, then log out."""
    form = DeleteAccountForm()
    if not form.validate_on_submit():
        return render_form("account/delete.html", form)
    reader = guards.reader()
    session = db.session()
    now = current_clock().now()
    try:
        # A savepoint, so a refusal takes the audit entry back with it.
        with session.begin_nested():
            audit.record(
                session,
                now=now,
                actor="reader (erased)",
                action="account.deleted",
                target=reader,
                ip=request.remote_addr,
            )
            privacy.erase(
                session,
                current_app.extensions["stripe_gateway"],
                reader,
                password=form.password.data,
                now=now,
            )
    except DomainError as error:
        return render_refused("account/delete.html", form, error)
    session.commit()
    logout_user()
    flash("Your account is deleted. Thank you for reading with us.", "info")
    return redirect(url_for("auth.signup"))


@bp.get("/account/data")
@login_required
def data_export() -> ResponseReturnValue:
    """Download everything Tollgate holds about the logged-in reader, as JSON."""
    reader = guards.reader()
    session = db.session()
    body = privacy.export(session, reader)
    audit.record(
        session,
        now=current_clock().now(),
        actor=reader,
        action="account.data_exported",
        target=reader,
        ip=request.remote_addr,
    )
    session.commit()
    response = jsonify(body)
    response.headers["Content-Disposition"] = (
        f"attachment; filename=tollgate-data-{reader.public_id}.json"
    )
    return response
