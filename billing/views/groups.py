"""Group pages: buy seats for an organisation, run it as its admin, join it by invite or domain.

Every action is a POST with a CSRF token that calls one service of ``billing.services.groups``
and comes back to the group's page with what happened.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import HiddenField, RadioField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange

from billing import db
from billing.clock import current_clock
from billing.errors import DomainError, NotFound, error_body
from billing.gateway import StripeGateway
from billing.models import Group, MembershipRole
from billing.services import group_vat, groups, ip_sessions, taxes
from billing.services.groups import GroupRules, NoSeatsLeft
from billing.services.vat import TaxKind, plain_rate
from billing.views import guards
from billing.views.forms import (
    COUNTRY_CHOICES,
    COUNTRY_NAMES,
    ButtonForm,
    CountField,
    _email_field,
    _known_country,
    _strip,
    _upper,
    render_form,
    render_refused,
)
from billing.views.payments import long_date

bp = Blueprint("groups", __name__)

IP_SESSION_DAYS = 30
"""The group page shows the anonymous IP sessions of this many days (today included)."""


def _rules() -> GroupRules:
    return GroupRules.from_config(current_app.config)


def _gateway() -> StripeGateway:
    gateway: StripeGateway = current_app.extensions["stripe_gateway"]
    return gateway


class NewGroupForm(FlaskForm):
    """The organisation's order: who it is, how many seats, how it pays."""

    name = StringField(
        "Organisation name",
        [DataRequired("Enter the organisation's name."), Length(max=200)],
        filters=[_strip],
    )
    billing_email = _email_field("Billing e-mail address")
    country = StringField(
        "Country", [DataRequired("Choose the country."), _known_country], filters=[_upper]
    )
    vat_id = StringField("VAT number (optional)", [Length(max=32)], filters=[_strip])
    seats = CountField("Seats", [InputRequired("Enter the number of seats.")])
    payment = RadioField(
        "Payment",
        choices=[
            SelectChoice("card", "By card"),
            SelectChoice("invoice", "By invoice, bank transfer within 30 days"),
        ],
        default="card",
    )
    confirm = HiddenField()


class CardForm(FlaskForm):
    """Stripe.js puts the saved card's payment method id here."""

    payment_method = HiddenField("Card", [DataRequired("Enter the card details.")])


class InviteForm(FlaskForm):
    """One or many addresses to invite."""

    emails = TextAreaField("E-mail addresses", [DataRequired("Enter at least one address.")])


class DomainForm(FlaskForm):
    """A domain to allow."""

    domain = StringField(
        "Domain", [DataRequired("Enter a domain such as example.org.")], filters=[_strip]
    )


class RangeForm(FlaskForm):
    """An office network to register."""

    cidr = StringField(
        "Network (CIDR)", [DataRequired("Enter a network such as 192.0.2.0/24.")], filters=[_strip]
    )
    label = StringField("Label (optional)", [Length(max=200)], filters=[_strip])


class SeatsForm(FlaskForm):
    """A new seat count, previewed before it is confirmed."""

    seats = CountField(
        "Seats",
        [
            InputRequired("Enter the number of seats."),
            NumberRange(min=1, max=100_000, message="Give a number of seats from 1 to 100,000."),
        ],
    )
    confirm = HiddenField()
    quote = HiddenField()
    """The signed price shown (group, seat counts, proration moment): only it can be confirmed."""


class TaxDetailsForm(FlaskForm):
    """The organisation's country and VAT number, which decide the VAT of its next invoices."""

    country = SelectField(
        "Country",
        [DataRequired("Choose the organisation's country."), _known_country],
        choices=COUNTRY_CHOICES,
        validate_choice=False,
        filters=[_upper],
    )
    vat_id = StringField("VAT number (empty: none)", [Length(max=32)], filters=[_strip])


def _my_group(public_id: str) -> Group:
    """The group of ``public_id`` if the logged-in reader is its admin (404 otherwise)."""
    group = groups.by_public_id(db.session(), public_id)
    if group is None:
        abort(404)
    try:
        groups.require_admin(db.session(), group, guards.reader())
    except DomainError:
        abort(404)
    return group


def _admin_group(public_id: str) -> Group:
    """The group of ``public_id`` if the logged-in reader is its admin: 403 for a member who is
    not, 404 for anyone else."""
    group = groups.by_public_id(db.session(), public_id)
    if group is None:
        abort(404)
    try:
        groups.require_admin(db.session(), group, guards.reader())
    except DomainError as error:
        abort(error.status)
    return group


@bp.get("/groups")
@login_required
def index() -> ResponseReturnValue:
    """The reader's groups, the groups their work address lets them join, and buying seats."""
    session, reader = db.session(), guards.reader()
    mine = groups.groups_of(session, reader)
    mine_ids = {g.id for g, _ in mine}
    joinable = [g for g in groups.joinable_groups(session, reader) if g.id not in mine_ids]
    return render_template(
        "groups/index.html",
        mine=mine,
        joinable=joinable,
        form=ButtonForm(),
        admin=MembershipRole.ADMIN,
    )


@bp.route("/groups/new", methods=["GET", "POST"])
@login_required
def new() -> ResponseReturnValue:
    """Order seats: the form, then the price (net, VAT, total) to confirm, then the group."""
    session, reader, now = db.session(), guards.reader(), current_clock().now()
    rules = _rules()
    form = NewGroupForm()
    if request.method == "GET":
        form.seats.data = form.seats.data or rules.min_seats
        form.billing_email.data = form.billing_email.data or reader.email
        form.country.data = form.country.data or reader.country
    context: dict[str, Any] = {"countries": COUNTRY_CHOICES, "rules": rules}
    try:
        context["plan"] = groups.seat_plan(session)
    except NotFound as error:
        return render_template("error.html", status=404, message=error.message), 404
    if not reader.is_verified:
        return render_template("groups/new.html", form=form, unverified=True, **context), (
            403 if request.method == "POST" else 200
        )
    if not form.validate_on_submit():
        return render_form("groups/new.html", form, **context)
    seats = int(form.seats.data or 0)
    if seats < rules.min_seats:
        form.seats.errors = [f"Buy at least {rules.min_seats} seats."]
        return render_form("groups/new.html", form, **context)
    quote = groups.quote(
        session, seats, country=form.country.data, vat_id=form.vat_id.data, now=now
    )
    if form.confirm.data != "yes":
        form.confirm.data = "yes"
        return render_template("groups/new.html", form=form, quote=quote, **context)
    try:
        group = groups.create_group(
            session,
            _gateway(),
            reader,
            name=form.name.data,
            billing_email=form.billing_email.data,
            country=form.country.data,
            vat_id=form.vat_id.data or "",
            seats=seats,
            by_invoice=form.payment.data == "invoice",
            rules=rules,
            now=now,
        )
    except DomainError as error:
        session.rollback()
        form.confirm.data = ""
        return render_refused("groups/new.html", form, error, **context)
    session.commit()
    if form.payment.data == "invoice":
        flash(
            "Your organisation is set up and active. The invoice was sent to "
            f"{group.billing_email}: pay it by bank transfer within {rules.days_until_due} days."
        )
        return redirect(url_for("groups.show", public_id=group.public_id))
    return redirect(url_for("groups.pay", public_id=group.public_id, seats=seats))


@bp.route("/groups/<public_id>/pay", methods=["GET", "POST"])
@login_required
def pay(public_id: str) -> ResponseReturnValue:
    """Pay the seats by card (the same card form as readers')."""
    group = _my_group(public_id)
    session, now, rules = db.session(), current_clock().now(), _rules()
    seats = request.args.get("seats", type=int) or rules.min_seats
    form = CardForm()
    config = current_app.config
    context = {
        "group": group,
        "seats": seats,
        "quote": groups.quote(session, seats, country=group.country, vat_id=group.vat_id, now=now),
        "stripe_js_url": config["STRIPE_JS_URL"],
        "stripe_key": config["STRIPE_PUBLISHABLE_KEY"],
    }
    if not form.validate_on_submit():
        return render_form("groups/pay.html", form, **context)
    try:
        groups.subscribe_by_card(
            session,
            _gateway(),
            group,
            guards.reader(),
            form.payment_method.data,
            seats,
            rules=rules,
            now=now,
        )
    except DomainError as error:
        session.rollback()
        return render_refused("groups/pay.html", form, error, **context)
    session.commit()
    flash(f"Paid: {seats} seats are yours. Invite your colleagues below.")
    return redirect(url_for("groups.show", public_id=group.public_id))


@bp.post("/groups/<public_id>/setup-intent")
@login_required
def setup_intent(public_id: str) -> ResponseReturnValue:
    """JSON: a SetupIntent's client secret for the organisation's card (CSRF in a header)."""
    group = _my_group(public_id)
    session = db.session()
    try:
        secret = groups.card_setup(session, _gateway(), group)
    except DomainError as error:
        session.rollback()
        return jsonify(error_body(error.code, error.message, error.field)), error.status
    session.commit()
    return jsonify({"client_secret": secret})


@bp.get("/groups/<public_id>")
@login_required
def show(public_id: str) -> ResponseReturnValue:
    """The admin's page: seats, members, invites, domains, networks."""
    group = _my_group(public_id)
    return _render_show(group)


def _render_show(group: Group, status: int = 200, **forms: Any) -> ResponseReturnValue:
    session, now, rules = db.session(), current_clock().now(), _rules()
    subscription = groups.current_subscription(session, group, now)
    seats_form = forms.get("seats_form") or SeatsForm(
        seats=subscription.quantity if subscription else rules.min_seats
    )
    tax_now = group_vat.group_tax_now(session, group, now=now, settings=taxes.current_settings())
    tax_form = forms.get("tax_form") or TaxDetailsForm(
        country=group.country, vat_id=group.vat_id or ""
    )
    return render_template(
        "groups/show.html",
        group=group,
        subscription=subscription,
        seats=subscription.quantity if subscription else 0,
        in_use=groups.seats_in_use(session, group),
        members=groups.members(session, group),
        idle={m.id for m in groups.idle_members(session, group, rules=rules, now=now)},
        invites=groups.pending_invites(session, group, now),
        domains=sorted(group.domains, key=lambda d: d.domain),
        ranges=sorted(group.ip_ranges, key=lambda r: (r.version, r.first_address)),
        ip_sessions=ip_sessions.last_days(session, group, today=now.date(), days=IP_SESSION_DAYS),
        ip_session_days=IP_SESSION_DAYS,
        invite_form=forms.get("invite_form") or InviteForm(),
        domain_form=forms.get("domain_form") or DomainForm(),
        range_form=forms.get("range_form") or RangeForm(),
        seats_form=seats_form,
        seat_change=forms.get("seat_change"),
        tax_now=tax_now,
        tax_words=group_vat_words(tax_now.country, tax_now.rate, tax_now.kind),
        tax_country_name=COUNTRY_NAMES.get(tax_now.country, tax_now.country),
        tax_form=tax_form,
        problems=_problems(forms.values()),
        report=forms.get("report"),
        button=ButtonForm(),
        admin_role=MembershipRole.ADMIN,
        me=guards.reader(),
        dev_mode=current_app.config["DEV_MODE"],
        rules=rules,
        now=now,
    ), status


def _act(group: Group, action: Any, done: str) -> ResponseReturnValue:
    """Run a button's action (CSRF checked), commit, and go back to the group page."""
    if not ButtonForm().validate_on_submit():
        abort(400)
    session = db.session()
    try:
        action(session, current_clock().now())
    except NoSeatsLeft as error:
        session.commit()  # the admins' "seats are full" mail is kept
        flash(error.message, "error")
        return redirect(url_for("groups.show", public_id=group.public_id))
    except DomainError as error:
        session.rollback()
        flash(error.message, "error")
        return redirect(url_for("groups.show", public_id=group.public_id))
    session.commit()
    flash(done)
    return redirect(url_for("groups.show", public_id=group.public_id))


def _problems(forms: Iterable[Any]) -> list[tuple[str, str, str]]:
    """Each refused field of the page's submitted form: its id, label and message."""
    return [
        (f.id, f.label.text, message)
        for form in forms
        if isinstance(form, FlaskForm)
        for f in form
        if f.type not in ("CSRFTokenField", "HiddenField")
        for message in f.errors
    ]


def _submit(group: Group, form: Any, name: str, action: Any, field: Any = None) -> Any:
    """Validate ``form`` (a form of the group page, passed to it as ``name``), run
    ``action(session, now)`` and commit; what the action returned.

    An invalid form, or the service's refusal (shown on ``field``, else on the field the error
    names), answers the group page again with the errors, by aborting with it; a refusal that
    belongs to no field is flashed on the group page instead.
    """
    if not form.validate_on_submit():
        abort(make_response(_render_show(group, 400, **{name: form})))
    session = db.session()
    try:
        done = action(session, current_clock().now())
    except DomainError as error:
        session.rollback()
        shown_on = field if field is not None else getattr(form, error.field or "", None)
        if shown_on is None:
            flash(error.message, "error")
            abort(redirect(url_for("groups.show", public_id=group.public_id)))
        shown_on.errors = [error.message]
        abort(make_response(_render_show(group, error.status, **{name: form})))
    session.commit()
    return done


@bp.post("/groups/<public_id>/invites")
@login_required
def invite(public_id: str) -> ResponseReturnValue:
    """Invite one or many addresses; each is reported back."""
    group = _my_group(public_id)
    form = InviteForm()
    report = _submit(
        group,
        form,
        "invite_form",
        lambda session, now: groups.invite(
            session,
            group,
            guards.reader(),
            form.emails.data,
            secret_keys=current_app.config["SECRET_KEYS"],
            base_url=current_app.config["PUBLIC_BASE_URL"],
            rules=_rules(),
            now=now,
        ),
        form.emails,
    )
    return _render_show(group, 200 if report.sent else 400, report=report)


@bp.post("/groups/<public_id>/invites/<invite_id>/resend")
@login_required
def resend(public_id: str, invite_id: str) -> ResponseReturnValue:
    """Send an invitation again with a fresh link."""
    group = _my_group(public_id)
    config = current_app.config
    return _act(
        group,
        lambda s, now: groups.resend_invite(
            s,
            group,
            guards.reader(),
            invite_id,
            secret_keys=config["SECRET_KEYS"],
            base_url=config["PUBLIC_BASE_URL"],
            rules=_rules(),
            now=now,
        ),
        "Invitation sent again.",
    )


@bp.post("/groups/<public_id>/invites/<invite_id>/revoke")
@login_required
def revoke(public_id: str, invite_id: str) -> ResponseReturnValue:
    """Withdraw an invitation."""
    group = _my_group(public_id)
    return _act(
        group,
        lambda s, now: groups.revoke_invite(s, group, guards.reader(), invite_id, now=now),
        "Invitation withdrawn.",
    )


@bp.post("/groups/<public_id>/members/<int:membership_id>/remove")
@login_required
def remove(public_id: str, membership_id: int) -> ResponseReturnValue:
    """Remove a member: their seat is free at once."""
    group = _my_group(public_id)
    return _act(
        group,
        lambda s, now: groups.remove_member(s, group, guards.reader(), membership_id, now=now),
        "Member removed; the seat is free.",
    )


@bp.post("/groups/<public_id>/members/<int:membership_id>/reclaim")
@login_required
def reclaim(public_id: str, membership_id: int) -> ResponseReturnValue:
    """Free an idle member's seat (the member is told)."""
    group = _my_group(public_id)
    return _act(
        group,
        lambda s, now: groups.reclaim_idle_seat(
            s, group, guards.reader(), membership_id, rules=_rules(), now=now
        ),
        "Idle seat reclaimed; the member was told.",
    )


@bp.post("/groups/<public_id>/members/<int:membership_id>/admin")
@login_required
def make_admin(public_id: str, membership_id: int) -> ResponseReturnValue:
    """Make a member an admin (``?make=0`` makes an admin a member again)."""
    group = _my_group(public_id)
    make = request.args.get("make", "1") != "0"
    return _act(
        group,
        lambda s, now: groups.set_admin(s, group, guards.reader(), membership_id, make, now=now),
        "Roles updated.",
    )


@bp.post("/groups/<public_id>/admins-take-seat")
@login_required
def admins_take_seat(public_id: str) -> ResponseReturnValue:
    """Whether admins count against the seats (``?take=0`` or ``1``)."""
    group = _my_group(public_id)
    take = request.args.get("take", "1") != "0"
    return _act(
        group,
        lambda s, now: groups.set_admins_take_seat(s, group, guards.reader(), take, now=now),
        "Saved.",
    )


@bp.post("/groups/<public_id>/auto-reclaim")
@login_required
def auto_reclaim(public_id: str) -> ResponseReturnValue:
    """Switch automatic reclaiming of idle seats on (``?on=1``) or off."""
    group = _my_group(public_id)
    enabled = request.args.get("on") == "1"
    return _act(
        group,
        lambda s, now: groups.set_auto_reclaim(s, group, guards.reader(), enabled, now=now),
        "Idle seats are now reclaimed automatically, a week after telling the member."
        if enabled
        else "Idle seats are no longer reclaimed automatically.",
    )


@bp.post("/groups/<public_id>/seats")
@login_required
def seats(public_id: str) -> ResponseReturnValue:
    """Change the seat count: Stripe's price for it first, then the change at that price once
    confirmed with the signed price the preview carried (any other is shown a fresh price)."""
    group = _my_group(public_id)
    session, now = db.session(), current_clock().now()
    form = SeatsForm()
    if not form.validate_on_submit():
        return _render_show(group, 400, seats_form=form)
    new_seats = int(form.seats.data or 0)
    if form.confirm.data != "yes":
        return _seat_preview(group, form, new_seats)
    try:
        shown = groups.confirmed_seat_change(
            current_app.config["SECRET_KEYS"], group, new_seats, form.quote.data or "", now
        )
        groups.change_seats(
            session,
            _gateway(),
            group,
            guards.reader(),
            new_seats,
            rules=_rules(),
            now=now,
            proration_date=shown.proration_date,
            quoted_from=shown.seats_from,
        )
    except DomainError as error:
        session.rollback()
        return _seat_preview(group, form, new_seats, refused=error)
    session.commit()
    flash(f"The organisation now has {new_seats} seats.")
    return redirect(url_for("groups.show", public_id=group.public_id))


def _seat_preview(
    group: Group, form: SeatsForm, new_seats: int, *, refused: DomainError | None = None
) -> ResponseReturnValue:
    """The price of changing to ``new_seats`` to confirm, with the signed value that confirms it;
    after a ``refused`` confirmation with its message too (400); the form with the reason alone
    when no price can be shown (fewer seats than in use, say)."""
    session, now = db.session(), current_clock().now()
    try:
        quote = groups.seat_change_price(
            session, _gateway(), group, new_seats, rules=_rules(), now=now
        )
    except DomainError as error:
        session.rollback()
        form.confirm.data = form.quote.data = ""
        form.seats.errors = [error.message]
        return _render_show(group, error.status, seats_form=form)
    form.confirm.data = "yes"
    form.quote.data = groups.seat_change_token(current_app.config["SECRET_KEYS"], group, quote, now)
    if refused is None:
        return _render_show(group, seats_form=form, seat_change=quote)
    form.seats.errors = [refused.message]
    return _render_show(group, refused.status, seats_form=form, seat_change=quote)


@bp.post("/groups/<public_id>/renewal")
@login_required
def renewal(public_id: str) -> ResponseReturnValue:
    """Cancel at the end of the paid year (``?renew=0``) or renew again (``?renew=1``)."""
    group = _my_group(public_id)
    renew = request.args.get("renew") == "1"

    def change(session: Any, now: Any) -> None:
        groups.set_renewal(session, _gateway(), group, guards.reader(), renew, now=now)

    return _act(
        group,
        change,
        "The subscription renews again."
        if renew
        else "Cancelled: members keep reading until the end of the paid year.",
    )


def group_vat_words(country: str, rate: Decimal, kind: TaxKind) -> str:
    """How an organisation's seats are taxed, in words: ``reverse charge (0 % VAT)``,
    ``Germany's VAT of 19 % on top of the net price``."""
    name = COUNTRY_NAMES.get(country, country)
    if kind == TaxKind.REVERSE_CHARGE:
        return "reverse charge (0 % VAT: you account for it)"
    if rate == 0:
        return f"no VAT ({name})"
    if kind == TaxKind.OUTSIDE_EU:
        return f"VAT of {plain_rate(rate)} % on top of the net price (outside the EU, {name})"
    return f"{name}'s VAT of {plain_rate(rate)} % on top of the net price"


@bp.post("/groups/<public_id>/tax")
@login_required
def tax_details(public_id: str) -> ResponseReturnValue:
    """Change the organisation's country and VAT number; they apply from its next invoice."""
    group = _admin_group(public_id)
    form = TaxDetailsForm()
    change = _submit(
        group,
        form,
        "tax_form",
        lambda session, now: group_vat.change_group_tax(
            session,
            _gateway(),
            group,
            guards.reader(),
            country=form.country.data,
            vat_id=form.vat_id.data or "",
            now=now,
            settings=taxes.current_settings(),
        ),
    )
    flash(_tax_change_message(change), "success" if change.changed else "info")
    return redirect(url_for("groups.show", public_id=group.public_id))


def _tax_change_message(change: group_vat.GroupTaxChange) -> str:
    """What the admin is told after changing the organisation's country or VAT number."""
    if not change.changed:
        return "These are already your organisation's country and VAT number: nothing changed."
    after = group_vat_words(change.after.country, change.after.rate, change.after.kind)
    before = group_vat_words(change.before.country, change.before.rate, change.before.kind)
    if change.applies_from is None:
        return f"Saved. Invoices from now on: {after}."
    when = long_date(change.applies_from)
    same = after == before
    return (
        f"Saved. From your next invoice, on {when}, your seats are invoiced with {after}"
        + ("" if same else f" instead of {before}")
        + ". Invoices already issued keep their VAT."
    )


@bp.post("/groups/<public_id>/domains")
@login_required
def add_domain(public_id: str) -> ResponseReturnValue:
    """Ask for an e-mail domain to be allowed (staff approve it)."""
    group = _my_group(public_id)
    form = DomainForm()
    _submit(
        group,
        form,
        "domain_form",
        lambda session, now: groups.add_domain(
            session, group, guards.reader(), form.domain.data, now=now
        ),
        form.domain,
    )
    flash("Domain registered: it takes effect once our staff approve it.")
    return redirect(url_for("groups.show", public_id=group.public_id))


@bp.post("/groups/<public_id>/domains/<int:domain_id>/remove")
@login_required
def remove_domain(public_id: str, domain_id: int) -> ResponseReturnValue:
    """Stop allowing a domain."""
    group = _my_group(public_id)
    return _act(
        group,
        lambda s, now: groups.remove_domain(s, group, guards.reader(), domain_id, now=now),
        "Domain removed.",
    )


@bp.post("/groups/<public_id>/ranges")
@login_required
def add_range(public_id: str) -> ResponseReturnValue:
    """Register an office network (staff approve it)."""
    group = _my_group(public_id)
    form = RangeForm()
    _submit(
        group,
        form,
        "range_form",
        lambda session, now: groups.add_ip_range(
            session,
            group,
            guards.reader(),
            form.cidr.data,
            label=form.label.data or "",
            rules=_rules(),
            now=now,
        ),
        form.cidr,
    )
    flash("Network registered: it takes effect once our staff approve it.")
    return redirect(url_for("groups.show", public_id=group.public_id))


@bp.post("/groups/<public_id>/ranges/<int:range_id>/remove")
@login_required
def remove_range(public_id: str, range_id: int) -> ResponseReturnValue:
    """Unregister an office network."""
    group = _my_group(public_id)
    return _act(
        group,
        lambda s, now: groups.remove_ip_range(s, group, guards.reader(), range_id, now=now),
        "Network removed.",
    )


@bp.post("/groups/<public_id>/dev/bank-transfer")
@login_required
def dev_bank_transfer(public_id: str) -> ResponseReturnValue:
    """Development only: the bank transfer for the open invoice arrives at the stand-in."""
    if not current_app.config["DEV_MODE"]:
        abort(404)
    group = _my_group(public_id)

    def transfer(session: Any, now: Any) -> None:
        groups.simulate_bank_transfer(session, _gateway(), group, now=now)

    return _act(group, transfer, "The bank transfer arrived: the invoice is paid.")


@bp.post("/groups/<public_id>/join")
@login_required
def join(public_id: str) -> ResponseReturnValue:
    """Take a seat with the reader's work e-mail address (an approved domain)."""
    if not ButtonForm().validate_on_submit():
        abort(400)
    session, now = db.session(), current_clock().now()
    try:
        groups.join_by_domain(session, guards.reader(), public_id, now=now)
    except NoSeatsLeft as error:
        session.commit()
        return render_template("groups/refused.html", message=error.message), 409
    except DomainError as error:
        session.rollback()
        return render_template("groups/refused.html", message=error.message), error.status
    session.commit()
    flash("You have joined the organisation: you can read everything.")
    return redirect(url_for("groups.index"))


@bp.route("/join/<token>", methods=["GET", "POST"])
def accept(token: str) -> ResponseReturnValue:
    """An invitation link: sign up or log in as the invited address, then join."""
    session, now, rules = db.session(), current_clock().now(), _rules()
    keys = current_app.config["SECRET_KEYS"]
    try:
        entry = groups.invite_for_token(session, keys, token, now=now, rules=rules)
    except DomainError as error:
        return render_template("groups/refused.html", message=error.message), 410
    group = session.get(Group, entry.group_id)
    form = ButtonForm()
    if not current_user.is_authenticated or request.method == "GET":
        return render_template(
            "groups/join.html", invite=entry, group=group, form=form, next_path=request.path
        )
    if not form.validate_on_submit():
        abort(400)
    try:
        groups.accept_invite(session, guards.reader(), keys, token, rules=rules, now=now)
    except NoSeatsLeft as error:
        session.commit()
        return render_template("groups/refused.html", message=error.message), 409
    except DomainError as error:
        session.rollback()
        return render_template("groups/refused.html", message=error.message), error.status
    session.commit()
    flash(f"Welcome to {group.name if group else 'the organisation'}: you can read everything.")
    return redirect(url_for("groups.index"))
