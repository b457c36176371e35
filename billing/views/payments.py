"""The reader's side of payments: subscribe by card, manage the subscription, card and invoices.

Card numbers never reach Tollgate: the page's script (``static/js/subscribe.js``) asks for a
SetupIntent (``POST /subscribe/setup-intent``), Stripe.js confirms it in the browser, and the form
then posts only the resulting payment method id. When the bank wants 3-D Secure for a payment, the
page that answers carries the PaymentIntent's client secret and the script completes the check.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import login_required
from flask_wtf import FlaskForm
from wtforms import Field, HiddenField, RadioField, SelectField
from wtforms.validators import ValidationError

from billing import db
from billing.clock import current_clock
from billing.errors import DomainError, error_body
from billing.extensions import limiter
from billing.gateway import StripeGateway
from billing.models import BillingInterval, Invoice, Plan, Reader, SubscriptionStatus
from billing.services import payments, stripe_mirror, taxes
from billing.services.vat import REVERSE_CHARGE_MENTION, CountryEvidence, plain_rate
from billing.views import guards
from billing.views.forms import (
    COUNTRY_CHOICES,
    COUNTRY_NAMES,
    ButtonForm,
    render_form,
    render_refused,
)
from billing.views.staff import Pagination

bp = Blueprint("payments", __name__)

INVOICES_PER_PAGE = 20
CARD_FIELDS = frozenset({"card", "payment_method", "payment_method_id"})
"""Field names the payments service may give a card error; the form shows them at the card."""
CURRENCY_SYMBOLS = {"eur": "€", "usd": "$", "gbp": "£"}
"""Currencies written with a symbol before the amount; others get their ISO code after it."""

PAYMENT_FAILED_WORDS = "Payment failed"
STATUS_WORDS: dict[str, str] = {
    SubscriptionStatus.ACTIVE: "Active",
    SubscriptionStatus.TRIALING: "Active",
    SubscriptionStatus.PAST_DUE: PAYMENT_FAILED_WORDS,
    SubscriptionStatus.UNPAID: PAYMENT_FAILED_WORDS,
    SubscriptionStatus.INCOMPLETE: PAYMENT_FAILED_WORDS,
    SubscriptionStatus.INCOMPLETE_EXPIRED: "Ended",
    SubscriptionStatus.CANCELED: "Ended",
    SubscriptionStatus.PAUSED: "Paused",
}
"""How Stripe's subscription statuses read on the account page (cancellations are worded apart)."""

CARD_BRANDS = {
    "amex": "American Express",
    "cartes_bancaires": "Cartes Bancaires",
    "diners": "Diners Club",
    "discover": "Discover",
    "jcb": "JCB",
    "mastercard": "Mastercard",
    "unionpay": "UnionPay",
    "visa": "Visa",
}
"""Card networks by Stripe's ``card.brand`` value."""

INVOICE_STATUS_WORDS = {
    "draft": "Draft",
    "open": "Due",
    "paid": "Paid",
    "uncollectible": "Unpaid",
    "void": "Cancelled",
}
"""How Stripe's invoice statuses read in the invoice list."""


# Formatting ------------------------------------------------------------------------------------


@bp.app_template_filter("money")
def money(amount: int | None, currency: str | None) -> str:
    """An amount in minor units as readers write it: ``money(1200, "eur")`` is ``€12.00``."""
    if amount is None:
        return "—"
    code = (currency or "").lower()
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 100)
    number = f"{major:,}.{minor:02d}"
    symbol = CURRENCY_SYMBOLS.get(code)
    if symbol:
        return f"{sign}{symbol}{number}"
    return f"{sign}{number} {code.upper()}".rstrip()


@bp.app_template_filter("long_date")
def long_date(moment: datetime | None) -> str:
    """A date as readers write it: ``9 December 2026`` (empty for no date)."""
    if moment is None:
        return ""
    return f"{moment.day} {moment:%B %Y}"


@bp.app_template_filter("price")
def price_text(plan: Plan) -> str:
    """A plan's price with its interval: ``€12.00 a month``, ``€120.00 a year``."""
    per = "a year" if plan.interval == BillingInterval.YEAR else "a month"
    return f"{money(plan.amount, plan.currency)} {per}"


@bp.app_template_filter("vat_line")
def vat_line(invoice: Invoice) -> str:
    """The VAT of an invoice as a reader reads it: ``€0.79 (7% DE)``, ``Reverse charge``, or ``—``
    for an invoice recorded without a rate."""
    if invoice.reverse_charge:
        return "Reverse charge"
    if invoice.tax_rate is None:
        return "—"
    rate = plain_rate(Decimal(invoice.tax_rate))
    country = f" {invoice.tax_country}" if invoice.tax_country else ""
    return f"{money(invoice.tax, invoice.currency)} ({rate}%{country})"


@bp.app_template_filter("card_brand")
def card_brand(brand: str | None) -> str:
    """A card network as readers know it: ``visa`` is ``Visa``, ``amex`` is ``American Express``."""
    if not brand:
        return "Card"
    return CARD_BRANDS.get(brand.lower(), brand.replace("_", " ").title())


def status_words(overview: payments.BillingOverview) -> str:
    """The subscription's state in words: ``Active``, ``Payment failed``,
    ``Cancelled — access until 31 December 2026``, ``Starts on 9 December 2026``."""
    if overview.status is None:
        return "No subscription"
    if overview.status == "scheduled":
        starts = overview.scheduled.starts_at if overview.scheduled else overview.next_charge_at
        return f"Starts on {long_date(starts)}"
    if overview.cancel_at_period_end and overview.access_until is not None:
        return f"Cancelled — access until {long_date(overview.access_until)}"
    words = STATUS_WORDS.get(overview.status, overview.status.replace("_", " ").capitalize())
    subscription = overview.subscription
    if words == "Ended" and subscription is not None and subscription.ended_at is not None:
        return f"Ended on {long_date(subscription.ended_at)}"
    return words


def is_running(overview: payments.BillingOverview, now: datetime) -> bool:
    """Whether the reader has a subscription that has not ended, or one scheduled to start."""
    if overview.scheduled is not None:
        return True
    subscription = overview.subscription
    return subscription is not None and not subscription.has_ended(now)


def subscription_context(reader: Reader, now: datetime) -> dict[str, Any]:
    """What the account page needs to show the "Subscription" section and the payment banner."""
    overview = payments.overview(db.session(), reader, now=now)
    return {
        "billing": overview,
        "billing_status": status_words(overview),
        "billing_running": is_running(overview, now),
        "billing_switch_to": _other_plan(overview),
    }


def _other_plan(overview: payments.BillingOverview) -> Plan | None:
    """The individual plan a reader can switch to (monthly <-> yearly), if any.

    None while a payment is failing: the card is fixed first, then the plan.
    """
    if overview.plan is None or overview.payment_problem or not _plan_changeable(overview):
        return None
    return next(
        (p for p in payments.reader_plans(db.session()) if p.interval != overview.plan.interval),
        None,
    )


def _plan_changeable(overview: payments.BillingOverview) -> bool:
    """Whether the overview's plan can still be changed (scheduled, or not ended)."""
    if overview.scheduled is not None:
        return True
    subscription = overview.subscription
    return subscription is not None and subscription.status not in (
        SubscriptionStatus.CANCELED,
        SubscriptionStatus.INCOMPLETE_EXPIRED,
    )


# Forms -----------------------------------------------------------------------------------------


def _card_given(_form: FlaskForm, field: Field) -> None:
    if not (field.data or "").strip():
        raise ValidationError("Enter your card details.")


class CardForm(FlaskForm):
    """A new card: the id of the payment method Stripe.js saved (never the card number)."""

    payment_method = HiddenField("Card", [_card_given])


class SubscribeForm(CardForm):
    """Subscribe: choose a plan, say where you live (for VAT), enter a card."""

    plan = RadioField("Plan", validate_choice=False)
    country = SelectField(
        "Country you live in",
        choices=COUNTRY_CHOICES,
        validate_choice=False,
        filters=[lambda value: value.strip().upper() if isinstance(value, str) else value],
    )

    def validate_plan(self, field: Field) -> None:
        """The plan must be one of the offered ones."""
        if field.data not in {code for code, _ in field.choices or []}:
            raise ValidationError("Choose monthly or yearly.")

    def validate_country(self, field: Field) -> None:
        """The country must be one of the listed ones."""
        if field.data not in COUNTRY_NAMES:
            raise ValidationError("Choose the country you live in from the list.")


class ConfirmCountryForm(FlaskForm):
    """Which country the reader lives in, when their card was issued elsewhere."""

    plan = HiddenField("Plan")
    country = RadioField("The country you live in", validate_choice=False)

    def validate_country(self, field: Field) -> None:
        """One of the two countries offered."""
        if field.data not in {code for code, _ in field.choices or []}:
            raise ValidationError("Choose the country you live in.")


class SwitchForm(FlaskForm):
    """Switch to the other plan (the plan code is in the form, so the button says what it does),
    at the proration moment of the preview shown (Unix seconds), so the charge is the one shown."""

    plan = HiddenField("Plan")
    proration_date = HiddenField("Preview time")

    def validate_proration_date(self, field: Field) -> None:
        """Whole Unix seconds, as the page wrote them."""
        text = (field.data or "").strip()
        if not text.isascii() or not text.isdigit() or len(text) > 11:
            raise ValidationError("This switch was not previewed: look at the switch again.")

    def preview_moment(self) -> datetime:
        """The preview's proration moment, as an aware UTC datetime."""
        return datetime.fromtimestamp(int(self.proration_date.data.strip()), UTC)


# Helpers ---------------------------------------------------------------------------------------


def _gateway() -> StripeGateway:
    gateway: StripeGateway = current_app.extensions["stripe_gateway"]
    return gateway


def _stripe_context() -> dict[str, Any]:
    config = current_app.config
    return {
        "stripe_js_url": config["STRIPE_JS_URL"],
        "stripe_key": config["STRIPE_PUBLISHABLE_KEY"],
    }


def _subscribe_form(plans: list[Plan]) -> SubscribeForm:
    form = SubscribeForm()
    form.plan.choices = [(plan.code, plan.name) for plan in plans]
    if form.plan.data is None and plans:
        form.plan.data = plans[0].code
    return form


def _render_subscribe(form: SubscribeForm, plans: list[Plan], **context: Any) -> str:
    return render_template(
        "payments/subscribe.html",
        form=form,
        plans=plans,
        **_stripe_context(),
        **context,
    )


def _refuse_subscribe(
    form: SubscribeForm, plans: list[Plan], error: DomainError, **context: Any
) -> ResponseReturnValue:
    """Put a domain error next to its field (or above the form), with the error's status."""
    field = form._fields.get(_form_field(error.field))
    if field is not None:
        field.errors = [*field.errors, error.message]
        return _render_subscribe(form, plans, **context), error.status
    return _render_subscribe(form, plans, form_error=error.message, **context), error.status


def _form_field(service_field: str | None) -> str:
    """The form field a service error's ``field`` belongs to (card errors go to the card)."""
    if service_field in CARD_FIELDS:
        return "payment_method"
    return service_field or ""


def _authenticate_page(
    client_secret: str, next_url: str, *, title: str, other_card_url: str
) -> ResponseReturnValue:
    """The page whose script completes the bank's 3-D Secure check, then goes to ``next_url``;
    ``other_card_url`` is where a reader whose bank said no goes on."""
    return render_template(
        "payments/authenticate.html",
        client_secret=client_secret,
        next_url=next_url,
        other_card_url=other_card_url,
        title=title,
        **_stripe_context(),
    )


# Subscribe -------------------------------------------------------------------------------------


@bp.route("/subscribe", methods=["GET", "POST"])
@login_required
def subscribe() -> ResponseReturnValue:
    """Choose monthly or yearly and enter a card; POST saves the card and subscribes.

    When the first payment of a new subscription is declined, the page asks for another card, and
    posting it pays that first payment instead of subscribing again.
    """
    reader = guards.reader()
    session = db.session()
    now = current_clock().now()
    overview = payments.overview(session, reader, now=now)
    pending = _first_payment_pending(overview)
    if is_running(overview, now) and not (pending and request.method == "POST"):
        flash("You already have a subscription. You can change it here.", "info")
        return redirect(url_for("account.overview"))
    plans = payments.reader_plans(session)
    form = _subscribe_form(plans)
    if not form.country.data:
        form.country.data = _declared_country(session, reader)
    if not reader.is_verified:
        status = 403 if request.method == "POST" else 200
        return _render_subscribe(form, plans, unverified=True), status
    trial = reader.trial
    context: dict[str, Any] = {
        "trial_ends": trial.ends_at if trial is not None and trial.is_active(now) else None,
        "pending_plan": overview.plan if pending else None,
    }
    if pending and overview.plan is not None:
        form.plan.data = overview.plan.code
    if not form.validate_on_submit():
        status = 400 if form.is_submitted() else 200
        return _render_subscribe(form, plans, **context), status
    gateway = _gateway()
    try:
        payments.save_card(
            session,
            gateway,
            reader,
            form.payment_method.data.strip(),
            now=now,
            ip=request.remote_addr,
        )
        if pending:
            action_secret = payments.retry_payment(session, gateway, reader, now=now)
        else:
            taxes.declare_country(
                session,
                gateway,
                reader,
                form.country.data,
                confirmed=False,
                now=now,
                ip=request.remote_addr,
            )
            outcome = payments.subscribe(session, gateway, reader, form.plan.data, now=now)
            action_secret = outcome.action_client_secret
    except taxes.CountryUnconfirmed as unconfirmed:
        # The card is saved (and mirrored); the reader now says where they live.
        session.commit()
        return _confirm_country_page(
            _confirm_country_form(unconfirmed.evidence, form.plan.data), unconfirmed.evidence
        )
    except payments.PaymentFailed as error:
        # What Stripe did stays mirrored (the saved card, a subscription left incomplete).
        session.commit()
        after = payments.overview(session, reader, now=now)
        if _first_payment_pending(after):
            context["pending_plan"] = after.plan
        form.payment_method.data = ""
        return _refuse_subscribe(form, plans, error, **context)
    except DomainError as error:
        session.rollback()
        form.payment_method.data = ""
        return _refuse_subscribe(form, plans, error, **context)
    session.commit()
    done_url = url_for("payments.done", next=_next_page())
    if action_secret:
        return _authenticate_page(
            action_secret, done_url, title="Confirm your payment", other_card_url=done_url
        )
    return redirect(done_url)


def _declared_country(session: Any, reader: Reader) -> str:
    """The country to prefill: the one the reader last gave when subscribing, else the account's."""
    customer = stripe_mirror.customer_of(session, reader)
    return (customer.declared_country if customer is not None else None) or reader.country


def _confirm_country_form(evidence: CountryEvidence, plan_code: str) -> ConfirmCountryForm:
    form = ConfirmCountryForm()
    form.country.choices = [
        (evidence.declared, COUNTRY_NAMES.get(evidence.declared, evidence.declared)),
        (evidence.card or "", COUNTRY_NAMES.get(evidence.card or "", evidence.card or "")),
    ]
    if not form.plan.data:
        form.plan.data = plan_code
    return form


def _confirm_country_page(
    form: ConfirmCountryForm, evidence: CountryEvidence, status: int = 200
) -> ResponseReturnValue:
    return (
        render_template(
            "payments/confirm_country.html",
            form=form,
            evidence=evidence,
            declared_name=COUNTRY_NAMES.get(evidence.declared, evidence.declared),
            card_name=COUNTRY_NAMES.get(evidence.card or "", evidence.card),
        ),
        status,
    )


@bp.route("/subscribe/country", methods=["POST"])
@login_required
def confirm_country() -> ResponseReturnValue:
    """The reader says which of the two countries (the one they gave, their card's) they live in;
    the choice is recorded as evidence and the subscription goes ahead with the saved card."""
    reader = guards.reader()
    session = db.session()
    now = current_clock().now()
    customer = stripe_mirror.customer_of(session, reader)
    if customer is None or not customer.default_payment_method_id or not reader.is_verified:
        return redirect(url_for("payments.subscribe"))
    declared = (request.form.get("declared") or "").strip().upper()
    evidence = CountryEvidence(declared=declared, card=customer.card_country)
    if evidence.agrees:
        return redirect(url_for("payments.subscribe"))
    form = _confirm_country_form(evidence, request.form.get("plan") or "")
    if declared not in COUNTRY_NAMES or not form.validate_on_submit():
        return _confirm_country_page(form, evidence, 400)
    gateway = _gateway()
    try:
        taxes.declare_country(
            session,
            gateway,
            reader,
            form.country.data,
            confirmed=True,
            now=now,
            ip=request.remote_addr,
        )
        outcome = payments.subscribe(session, gateway, reader, form.plan.data, now=now)
    except payments.PaymentFailed as error:
        session.commit()
        flash(error.message, "error")
        return redirect(url_for("payments.subscribe"))
    except DomainError as error:
        session.rollback()
        flash(error.message, "error")
        return redirect(url_for("payments.subscribe"))
    session.commit()
    done_url = url_for("payments.done")
    if outcome.action_client_secret:
        return _authenticate_page(
            outcome.action_client_secret,
            done_url,
            title="Confirm your payment",
            other_card_url=done_url,
        )
    return redirect(done_url)


def _next_page() -> str | None:
    """Where the reader came from (the paywall's ``/access`` flow), if it is one of our pages."""
    return guards.safe_next(request.args.get("next"), "") or None


def _first_payment_pending(overview: payments.BillingOverview) -> bool:
    """Whether the reader's new subscription still waits for its first payment (``incomplete``)."""
    subscription = overview.subscription
    return subscription is not None and subscription.status == SubscriptionStatus.INCOMPLETE


@bp.post("/subscribe/setup-intent")
@login_required
@limiter.limit(lambda: current_app.config["RATELIMIT_CARD"])
def setup_intent() -> ResponseReturnValue:
    """JSON: a SetupIntent's client secret, for Stripe.js to save a card with (CSRF in a header)."""
    reader = guards.reader()
    session = db.session()
    try:
        secret = payments.card_setup(session, _gateway(), reader, now=current_clock().now())
    except DomainError as error:
        session.rollback()
        return jsonify(error_body(error.code, error.message, error.field)), error.status
    session.commit()
    return jsonify({"client_secret": secret.client_secret})


@bp.get("/subscribe/done")
@login_required
def done() -> ResponseReturnValue:
    """The confirmation: which plan, how much, and when the card is (or was) charged."""
    reader = guards.reader()
    session = db.session()
    now = current_clock().now()
    overview = payments.overview(session, reader, now=now)
    checked = _first_payment_pending(overview)
    if checked and overview.subscription is not None:
        # Back from the bank's 3-D Secure check: fetch the outcome instead of waiting for Stripe.
        stripe_mirror.sync_subscription(
            session, _gateway(), overview.subscription.stripe_id, now=now
        )
        session.commit()
        overview = payments.overview(session, reader, now=now)
    if not is_running(overview, now) or overview.plan is None:
        if checked:
            flash(
                "Your bank did not confirm the payment, so your subscription did not start. "
                "Please try again, or use another card.",
                "error",
            )
        return redirect(url_for("payments.subscribe"))
    return render_template(
        "payments/done.html",
        billing=overview,
        billing_status=status_words(overview),
        next_url=_next_page(),
    )


# Card ------------------------------------------------------------------------------------------


@bp.route("/account/card", methods=["GET", "POST"])
@login_required
def card() -> ResponseReturnValue:
    """Replace the card on file; when a payment is failing, pay it with the new card at once."""
    reader = guards.reader()
    session = db.session()
    now = current_clock().now()
    form = CardForm()
    overview = payments.overview(session, reader, now=now)
    context = {"billing": overview, **_stripe_context()}
    if not reader.is_verified:
        status = 403 if request.method == "POST" else 200
        return render_template("payments/card.html", form=form, unverified=True, **context), status
    if not form.validate_on_submit():
        return render_form("payments/card.html", form, **context)
    gateway = _gateway()
    try:
        saved = payments.save_card(
            session,
            gateway,
            reader,
            form.payment_method.data.strip(),
            now=now,
            ip=request.remote_addr,
        )
        action_secret = None
        if overview.payment_problem:
            action_secret = payments.retry_payment(session, gateway, reader, now=now)
    except payments.PaymentFailed as error:
        session.commit()
        return _card_refused(form, error, context)
    except DomainError as error:
        session.rollback()
        return _card_refused(form, error, context)
    session.commit()
    if action_secret:
        return _authenticate_page(
            action_secret,
            url_for("account.overview"),
            title="Confirm your payment",
            other_card_url=url_for("payments.card"),
        )
    ending = f" ending in {saved.last4}" if saved.last4 else ""
    if overview.payment_problem:
        flash(f"Thank you: your card{ending} is saved and your payment went through.", "success")
    else:
        flash(f"Your card{ending} is saved.", "success")
    return redirect(url_for("account.overview"))


def _card_refused(
    form: CardForm, error: DomainError, context: dict[str, Any]
) -> ResponseReturnValue:
    """The card page again, with the service's refusal next to the card field."""
    if error.field in CARD_FIELDS:
        error.field = "payment_method"
    return render_refused("payments/card.html", form, error, **context)


# Invoices --------------------------------------------------------------------------------------


@bp.get("/account/invoices")
@login_required
def invoices() -> ResponseReturnValue:
    """The reader's invoices, newest first, 20 a page, with links to Stripe's invoice and PDF."""
    reader = guards.reader()
    page = request.args.get("page", 1, type=int) or 1
    if page < 1:
        abort(404)
    rows, total = payments.invoices_for(db.session(), reader, page=page, per_page=INVOICES_PER_PAGE)
    pages = max(1, math.ceil(total / INVOICES_PER_PAGE))
    if page > pages:
        abort(404)
    return render_template(
        "payments/invoices.html",
        invoices=rows,
        pagination=Pagination(page=page, pages=pages, total=total),
        status_words=INVOICE_STATUS_WORDS,
        reverse_charge_mention=REVERSE_CHARGE_MENTION,
    )


# Subscription actions --------------------------------------------------------------------------


def _action_page(
    template: str, form: FlaskForm, overview: payments.BillingOverview, **extra: Any
) -> ResponseReturnValue:
    """A confirmation page (200), or the same page refused (400) when its form did not validate."""
    return render_form(
        template,
        form,
        billing=overview,
        billing_status=status_words(overview),
        **extra,
    )


@bp.route("/account/subscription/cancel", methods=["GET", "POST"])
@login_required
def cancel() -> ResponseReturnValue:
    """Ask, then cancel at the end of the paid period (a scheduled start is simply called off)."""
    reader = guards.reader()
    session = db.session()
    now = current_clock().now()
    overview = payments.overview(session, reader, now=now)
    form = ButtonForm()
    if not is_running(overview, now):
        raise payments.NothingToManage("You have no subscription to cancel.")
    subscription = overview.subscription
    scheduled_only = overview.scheduled is not None and (
        subscription is None or subscription.has_ended(now)
    )
    if not form.validate_on_submit():
        return _action_page("payments/cancel.html", form, overview, scheduled_only=scheduled_only)
    if scheduled_only:
        payments.cancel_scheduled(session, reader, now=now)
        session.commit()
        flash("Your subscription will not start. Nothing will be charged.", "success")
        return redirect(url_for("account.overview"))
    cancelled = payments.cancel_at_period_end(session, _gateway(), reader, now=now)
    session.commit()
    if cancelled.has_ended(now):
        flash("Your subscription is cancelled. Nothing more will be charged.", "success")
        return redirect(url_for("account.overview"))
    flash(
        "Your subscription is cancelled. You can keep reading until "
        f"{long_date(cancelled.current_period_end)}.",
        "success",
    )
    return redirect(url_for("account.overview"))


@bp.route("/account/subscription/resume", methods=["GET", "POST"])
@login_required
def resume() -> ResponseReturnValue:
    """Ask, then take back a cancellation before the period ends."""
    reader = guards.reader()
    session = db.session()
    now = current_clock().now()
    overview = payments.overview(session, reader, now=now)
    form = ButtonForm()
    if not overview.cancel_at_period_end:
        raise payments.NothingToManage(
            "Your subscription is not cancelled, so there is nothing to resume."
        )
    if not form.validate_on_submit():
        return _action_page("payments/resume.html", form, overview)
    subscription = payments.resume(session, _gateway(), reader, now=now)
    session.commit()
    flash(
        f"Your subscription continues. Next charge on {long_date(subscription.current_period_end)}.",
        "success",
    )
    return redirect(url_for("account.overview"))


@bp.route("/account/subscription/switch", methods=["GET", "POST"])
@login_required
def switch() -> ResponseReturnValue:
    """Ask, then switch between monthly and yearly."""
    reader = guards.reader()
    session = db.session()
    now = current_clock().now()
    overview = payments.overview(session, reader, now=now)
    target = _other_plan(overview)
    if target is None:
        raise payments.NothingToManage("You have no subscription to switch.")
    form = SwitchForm()

    def ask(error: str | None = None, status: int | None = None) -> ResponseReturnValue:
        """The question, with the charge previewed as of now (the moment the form carries)."""
        preview = payments.preview_switch(session, _gateway(), reader, target.code, now=now)
        form.plan.data = target.code
        form.proration_date.data = str(int(preview.proration_date.timestamp()))
        return render_form(
            "payments/switch.html",
            form,
            status,
            billing=overview,
            billing_status=status_words(overview),
            target=target,
            preview=preview,
            form_error=error,
        )

    if not form.validate_on_submit():
        errors = form.proration_date.errors
        return ask(errors[0] if errors else None)
    if overview.plan is not None and form.plan.data == overview.plan.code:
        # A second click on a switch already made (or a plan that is already the reader's).
        flash(f"You are already on the {overview.plan.name.lower()} plan: nothing changed.", "info")
        return redirect(url_for("account.overview"))
    try:
        switched = payments.switch_plan(
            session,
            _gateway(),
            reader,
            form.plan.data or "",
            now=now,
            proration_date=form.preview_moment(),
        )
    except payments.PreviewExpired as expired:
        session.rollback()
        return ask(expired.message, expired.status)
    except payments.PaymentFailed as error:
        # The switch is made and mirrored; its payment failed, so the account shows the banner.
        session.commit()
        flash(
            f"Your plan is switched, but its payment did not go through. {error.message}", "error"
        )
        return redirect(url_for("account.overview"))
    session.commit()
    plan = switched.plan
    flash(
        f"Your plan is now {plan.name.lower()}: {price_text(plan)}. We mailed you the details.",
        "success",
    )
    return redirect(url_for("account.overview"))
