"""Staff pages (admins only) for API clients: list, create, rotate and revoke their keys.

A key is shown once, on the page that answers the creation or the rotation, and never again.
These routes join the staff blueprint (``/staff/api-clients...``).
"""

from __future__ import annotations

from typing import Any

from flask import flash, make_response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from wtforms import Field, SelectMultipleField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, StopValidation, ValidationError
from wtforms.widgets import CheckboxInput, ListWidget

from billing import db
from billing.clock import current_clock
from billing.errors import DomainError, ValidationFailed
from billing.models import ApiClient
from billing.services import api_clients, audit
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


def _key_page(client: ApiClient, key: str, *, rotated: bool) -> ResponseReturnValue:
    response = make_response(
        render_template("staff/api_clients/key.html", client=client, key=key, rotated=rotated)
    )
    response.headers["Cache-Control"] = "no-store"
    return response


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
        client, key = api_clients.create(
            session,
            name=form.name.data or "",
            scopes=form.scopes.data or [],
            allowed_origins=form.origins(),
            created_by=admin,
            now=now,
        )
    except DomainError as error:
        return render_refused("staff/api_clients/new.html", form, error)
    audit.record(
        session,
        now=now,
        actor=admin,
        action="api_client.created",
        target=client,
        details={"name": client.name, "scopes": client.scopes, "origins": client.allowed_origins},
        ip=request.remote_addr,
    )
    session.commit()
    return _key_page(client, key, rotated=False)


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
    return _key_page(client, key, rotated=True)


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
