"""Staff pages (admins only) for API clients: list, create, rotate and revoke their keys.

A client has an API key (to call the API) and a set of token keys (to sign its access tokens).
Each key is shown once, on the page that answers the creation or the rotation, and never again.
These routes join the staff blueprint (``/staff/api-clients...``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import flash, make_response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from wtforms import Field, SelectField, SelectMultipleField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, StopValidation, ValidationError
from wtforms.widgets import CheckboxInput, ListWidget

from billing import db
from billing.clock import current_clock
from billing.errors import DomainError, NotFound, ValidationFailed
from billing.models import ApiClient
from billing.services import api_clients, audit, token_keys, tokens
from billing.views import guards
from billing.views.forms import ButtonForm, render_form, render_refused
from billing.views.staff import bp


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _at_least_one_scope(_form: FlaskForm, field: Field) -> None:
    # Not DataRequired: that would mark every checkbox "required".
    if not field.data:
        raise StopValidation("Choose at least one scope.")


def _valid_origins(_form: FlaskForm, field: Field) -> None:
    try:
        api_clients.check_origins((field.data or "").splitlines())
    except ValidationFailed as error:
        raise ValidationError(error.message) from error


class ApiClientForm(FlaskForm):
    """A new API client: its name, scopes and the origins readers may be sent back to."""

    name = StringField(
        "Name",
        [
            DataRequired("Give the client a name."),
            Length(
                max=api_clients.NAME_MAX_LENGTH,
                message=f"Use at most {api_clients.NAME_MAX_LENGTH} characters.",
            ),
        ],
        filters=[_strip],
    )
    scopes = SelectMultipleField(
        "Scopes",
        [_at_least_one_scope],
        choices=[
            SelectChoice(scope, f"{scope}: {api_clients.SCOPE_DESCRIPTIONS[scope]}")
            for scope in api_clients.SCOPES
        ],
        widget=ListWidget(prefix_label=False),
        option_widget=CheckboxInput(),
    )
    allowed_origins = TextAreaField("Allowed return origins", [_valid_origins])

    def origins(self) -> list[str]:
        """The origins field as a list of lines."""
        return (self.allowed_origins.data or "").splitlines()


_SIGNS_IN_CHOICES = [
    SelectChoice("0", "At once"),
    SelectChoice("3600", "In 1 hour"),
    SelectChoice("86400", "In 1 day"),
    SelectChoice("604800", "In 7 days"),
]
_RETIRE_AFTER_CHOICES = [
    SelectChoice("900", "15 minutes after (a token's lifetime)"),
    SelectChoice("3600", "1 hour after"),
    SelectChoice("86400", "1 day after"),
    SelectChoice("604800", "7 days after"),
]


class RotateTokenKeyForm(FlaskForm):
    """When the new token key starts signing, and when the earlier ones stop verifying."""

    signs_in = SelectField("The new key starts signing", choices=_SIGNS_IN_CHOICES, default="3600")
    retire_after = SelectField(
        "Earlier keys stop verifying", choices=_RETIRE_AFTER_CHOICES, default="3600"
    )


def _no_store(body: str) -> ResponseReturnValue:
    response = make_response(body)
    response.headers["Cache-Control"] = "no-store"
    return response


def _key_page(
    client: ApiClient, key: str | None, token_key: tokens.TokenKey | None, *, rotated: bool
) -> ResponseReturnValue:
    session = db.session()
    signs_from = None
    if token_key is not None:
        signs_from = token_keys.by_kid(session, token_key.kid).signs_from
    return _no_store(
        render_template(
            "staff/api_clients/key.html",
            client=client,
            key=key,
            token_key=token_key,
            signs_from=signs_from,
            rotated=rotated,
        )
    )


@bp.get("/api-clients")
@guards.staff_required()
def api_clients_list() -> str:
    """Every API client with its prefix, scopes, origins and when it was created and last used."""
    return render_template(
        "staff/api_clients/list.html",
        clients=api_clients.all_clients(db.session()),
        button=ButtonForm(),
    )


@bp.route("/api-clients/new", methods=["GET", "POST"])
@guards.staff_required()
def api_client_new() -> ResponseReturnValue:
    """Create a client and show its key, once."""
    form = ApiClientForm()
    if not form.validate_on_submit():
        return render_form("staff/api_clients/new.html", form)
    session = db.session()
    now = current_clock().now()
    admin = guards.reader()
    try:
        client, key, token_key = api_clients.create(
            session,
            name=form.name.data or "",
            scopes=form.scopes.data or [],
            allowed_origins=form.origins(),
            created_by=admin,
            now=now,
            wrapper=token_keys.current_wrapper(),
        )
    except DomainError as error:
        return render_refused("staff/api_clients/new.html", form, error)
    audit.record(
        session,
        now=now,
        actor=admin,
        action="api_client.created",
        target=client,
        details={
            "name": client.name,
            "scopes": client.scopes,
            "origins": client.allowed_origins,
            "token_key": token_key.kid,
        },
        ip=request.remote_addr,
    )
    session.commit()
    return _key_page(client, key, token_key, rotated=False)


@bp.post("/api-clients/<public_id>/rotate")
@guards.staff_required()
def api_client_rotate(public_id: str) -> ResponseReturnValue:
    """Give a client a new key (shown once); the old key stops working."""
    if not ButtonForm().validate_on_submit():
        flash("The form expired; try again.", "error")
        return redirect(url_for("staff.api_clients_list"))
    session = db.session()
    client = api_clients.by_public_id(session, public_id)
    try:
        key = api_clients.rotate(session, client)
    except DomainError as error:
        flash(error.message, "error")
        return redirect(url_for("staff.api_clients_list"))
    audit.record(
        session,
        now=current_clock().now(),
        actor=guards.reader(),
        action="api_client.rotated",
        target=client,
        details={"key_prefix": client.key_prefix},
        ip=request.remote_addr,
    )
    session.commit()
    api_clients.current_cache().clear()
    return _key_page(client, key, None, rotated=True)


@bp.post("/api-clients/<public_id>/revoke")
@guards.staff_required()
def api_client_revoke(public_id: str) -> ResponseReturnValue:
    """Revoke a client's key for good."""
    if not ButtonForm().validate_on_submit():
        flash("The form expired; try again.", "error")
        return redirect(url_for("staff.api_clients_list"))
    session = db.session()
    client = api_clients.by_public_id(session, public_id)
    now = current_clock().now()
    try:
        api_clients.revoke(client, now=now)
    except DomainError as error:
        flash(error.message, "error")
        return redirect(url_for("staff.api_clients_list"))
    audit.record(
        session,
        now=now,
        actor=guards.reader(),
        action="api_client.revoked",
        target=client,
        ip=request.remote_addr,
    )
    session.commit()
    api_clients.current_cache().clear()
    flash(f"{client.name} is revoked; its key no longer works.", "success")
    return redirect(url_for("staff.api_clients_list"))


@bp.get("/api-clients/<public_id>/token-keys")
@guards.staff_required()
def api_client_token_keys(public_id: str) -> str:
    """A client's token keys with their state, and the forms to rotate and revoke them."""
    session = db.session()
    client = api_clients.by_public_id(session, public_id)
    keys = token_keys.keys_of(session, client.id)
    now = current_clock().now()
    return render_template(
        "staff/api_clients/token_keys.html",
        client=client,
        keys=[(key, token_keys.state(key, keys, now)) for key in keys],
        rotate=RotateTokenKeyForm(),
        button=ButtonForm(),
    )


@bp.post("/api-clients/<public_id>/token-keys/rotate")
@guards.staff_required()
def api_client_token_key_rotate(public_id: str) -> ResponseReturnValue:
    """Add a token key (shown once) that signs from the chosen time; earlier keys retire later."""
    back = redirect(url_for("staff.api_client_token_keys", public_id=public_id))
    form = RotateTokenKeyForm()
    if not form.validate_on_submit():
        flash("Choose when the new key signs and when the earlier ones retire.", "error")
        return back
    session = db.session()
    client = api_clients.by_public_id(session, public_id)
    now = current_clock().now()
    signs_in = timedelta(seconds=int(form.signs_in.data or 0))
    retire_after = timedelta(seconds=int(form.retire_after.data or 0))
    try:
        token_key = token_keys.rotate(
            session,
            client,
            wrapper=token_keys.current_wrapper(),
            now=now,
            signs_in=signs_in,
            retire_after=retire_after,
        )
    except DomainError as error:
        flash(error.message, "error")
        return back
    audit.record(
        session,
        now=now,
        actor=guards.reader(),
        action="api_client.token_key_rotated",
        target=client,
        details={
            "kid": token_key.kid,
            "signs_in_seconds": int(signs_in.total_seconds()),
            "retire_after_seconds": int(retire_after.total_seconds()),
        },
        ip=request.remote_addr,
    )
    session.commit()
    return _key_page(client, None, token_key, rotated=True)


@bp.post("/api-clients/<public_id>/token-keys/<kid>/revoke")
@guards.staff_required()
def api_client_token_key_revoke(public_id: str, kid: str) -> ResponseReturnValue:
    """Revoke one token key at once: it signs and verifies nothing more."""
    back = redirect(url_for("staff.api_client_token_keys", public_id=public_id))
    if not ButtonForm().validate_on_submit():
        flash("The form expired; try again.", "error")
        return back
    session = db.session()
    client = api_clients.by_public_id(session, public_id)
    now = current_clock().now()
    try:
        key = token_keys.by_kid(session, kid)
        if key.api_client_id != client.id:
            raise NotFound("This client has no such token key.", field="kid")
        token_keys.revoke(key, now=now)
    except DomainError as error:
        flash(error.message, "error")
        return back
    audit.record(
        session,
        now=now,
        actor=guards.reader(),
        action="api_client.token_key_revoked",
        target=client,
        details={"kid": kid},
        ip=request.remote_addr,
    )
    session.commit()
    flash(f"Token key {kid} is revoked: Tollgate no longer signs or accepts it.", "success")
    return back
