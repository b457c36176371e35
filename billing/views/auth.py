"""Sign-up, log-in, log-out, e-mail verification and password reset.

None of these pages tells a visitor whether an address has an account: sign-up with a taken
address, log-in with an unknown one and a reset request for an unknown one look exactly like their
counterparts, and only the owner of the address learns what happened, by mail.
"""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask import session as flask_session
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_user, logout_user
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing import db
from billing.clock import current_clock
from billing.errors import DomainError
from billing.extensions import limiter
from billing.models import Reader
from billing.services import accounts, audit, mail, notices
from billing.views import guards
from billing.views.forms import (
    ButtonForm,
    LoginForm,
    ResetPasswordForm,
    ResetRequestForm,
    SignupForm,
    render_form,
    render_refused,
)

bp = Blueprint("auth", __name__)

LOGIN_FAILED = "E-mail or password is not correct."
CHECK_INBOX_KEY = "check_inbox"
"""The session key of the address a sign-up sent its mail to (shown on "Check your inbox")."""


def absolute_url(endpoint: str, **values: Any) -> str:
    """The public, absolute address of ``endpoint``, for links in mails."""
    return str(current_app.config["PUBLIC_BASE_URL"]) + url_for(endpoint, **values)


def duration(seconds: int) -> str:
    """A link lifetime in words: ``2 days``, ``5 hours``, ``60 minutes``."""
    if seconds >= 2 * 86400 and seconds % 86400 == 0:
        return f"{seconds // 86400} days"
    if seconds >= 2 * 3600:
        return f"{seconds // 3600} hours"
    minutes = max(seconds // 60, 1)
    return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"


def send_verification(session: Session, reader: Reader, next_path: str | None = None) -> None:
    """Mail ``reader`` a link that verifies their current address (within the caller's transaction).

    ``next_path``, a local path, rides along on the link: after verifying, the reader goes there.
    """
    config = current_app.config
    token = accounts.verification_token(config["SECRET_KEYS"], reader, current_clock().now())
    mail.send(
        session,
        reader.email,
        "verify_email",
        name=reader.name,
        link=absolute_url("auth.verify_email", token=token, next=next_path or None),
        valid_for=duration(int(config["EMAIL_VERIFY_MAX_AGE"])),
    )


@bp.route("/signup", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["RATELIMIT_SIGNUP"], methods=["POST"])
def signup() -> ResponseReturnValue:
    """Create an account and send the verification link; a taken address looks the same."""
    next_path = guards.safe_next(request.args.get("next"), "") or None
    form = SignupForm()
    if not form.validate_on_submit():
        return render_form("auth/signup.html", form)
    session = db.session()
    try:
        result = accounts.signup(
            session,
            email=form.email.data,
            password=form.password.data,
            name=form.name.data,
            country=form.country.data,
            now=current_clock().now(),
        )
    except DomainError as error:
        return render_refused("auth/signup.html", form, error)
    except IntegrityError:
        # The same address signed up at the same moment: answer as for any taken address.
        session.rollback()
        return redirect(url_for("auth.verify_email", next=next_path))
    # Both answers (new account, address taken) say where the mail went, in the same words.
    flask_session[CHECK_INBOX_KEY] = accounts.normalise_email(form.email.data)
    if result.reader is not None:
        send_verification(session, result.reader, next_path)
        session.commit()
        login_user(result.reader)
    elif result.existing is not None:
        mail.send(
            session,
            result.existing.email,
            "signup_exists",
            name=result.existing.name,
            login_link=absolute_url("auth.login"),
            reset_link=absolute_url("auth.reset_request"),
        )
        session.commit()
    return redirect(url_for("auth.verify_email", next=next_path))


@bp.get("/verify-email")
def verify_email() -> ResponseReturnValue:
    """With ``token``: verify the address, then go to ``next``. Without: "check your inbox"."""
    token = request.args.get("token")
    after = guards.safe_next(request.args.get("next"), url_for("account.overview"))
    if not token:
        if current_user.is_authenticated and guards.reader().is_verified:
            return redirect(after)
        return render_template("auth/check_inbox.html", form=ButtonForm(), sent_to=_sent_to())
    config = current_app.config
    session = db.session()
    try:
        accounts.verify_email(
            session,
            config["SECRET_KEYS"],
            token,
            now=current_clock().now(),
            max_age=int(config["EMAIL_VERIFY_MAX_AGE"]),
        )
    except accounts.InvalidLink as error:
        can_resend = current_user.is_authenticated and not guards.reader().is_verified
        return render_template(
            "auth/verify_failed.html",
            message=error.message,
            can_resend=can_resend,
            form=ButtonForm(),
        ), 400
    session.commit()
    flash("Your e-mail address is verified.", "success")
    return redirect(after)


def _sent_to() -> str | None:
    """The address the verification link went to: the reader's, or the one just signed up with."""
    if current_user.is_authenticated:
        return guards.reader().email
    value = flask_session.get(CHECK_INBOX_KEY)
    return value if isinstance(value, str) else None


@bp.post("/verify-email/resend")
@limiter.limit(lambda: current_app.config["RATELIMIT_SIGNUP"], methods=["POST"])
def resend_verification() -> ResponseReturnValue:
    """Send the verification link again to the logged-in reader (visitors get the same answer)."""
    next_path = guards.safe_next(request.args.get("next"), "") or None
    form = ButtonForm()
    if not form.validate_on_submit():
        return render_template("auth/check_inbox.html", form=form, sent_to=_sent_to()), 400
    if current_user.is_authenticated:
        reader = guards.reader()
        if reader.is_verified:
            flash("Your e-mail address is already verified.", "info")
            return redirect(guards.safe_next(next_path, url_for("account.overview")))
        session = db.session()
        send_verification(session, reader, next_path)
        session.commit()
    flash("We sent the link again. It can take a minute to arrive.", "success")
    return redirect(url_for("auth.verify_email", next=next_path))


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["RATELIMIT_LOGIN"], methods=["POST"])
def login() -> ResponseReturnValue:
    """Log in; an unknown address and a wrong password get the very same answer."""
    form = LoginForm()
    if not form.validate_on_submit():
        return render_form("auth/login.html", form)
    reader = accounts.authenticate(db.session(), form.email.data, form.password.data)
    if reader is None:
        # Both failures render the same page: the address as typed, no password, one message.
        return render_form("auth/login.html", form, 400, form_error=LOGIN_FAILED)
    login_user(reader)
    return redirect(guards.safe_next(request.args.get("next"), url_for("account.overview")))


@bp.get("/logout")
def logout_page() -> ResponseReturnValue:
    """Ask before logging out (a content site sends readers here after forgetting their token)."""
    return render_template("auth/logout.html", form=ButtonForm())


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """End this browser's session."""
    logout_user()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/password/reset", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["RATELIMIT_RESET"], methods=["POST"])
def reset_request() -> ResponseReturnValue:
    """Ask for a reset link; the answer is the same whether the address has an account or not."""
    if request.method == "GET" and request.args.get("sent"):
        return render_template("auth/reset_sent.html")
    form = ResetRequestForm()
    if not form.validate_on_submit():
        return render_form("auth/reset_request.html", form)
    config = current_app.config
    session = db.session()
    reader = accounts.find_by_email(session, accounts.normalise_email(form.email.data))
    if reader is not None:
        token = accounts.reset_token(config["SECRET_KEYS"], reader, current_clock().now())
        mail.send(
            session,
            reader.email,
            "password_reset",
            name=reader.name,
            link=absolute_url("auth.reset_password", token=token),
            valid_for=duration(int(config["PASSWORD_RESET_MAX_AGE"])),
        )
        session.commit()
    return redirect(url_for("auth.reset_request", sent=1))


@bp.route("/password/reset/<token>", methods=["GET", "POST"])
def reset_password(token: str) -> ResponseReturnValue:
    """Set a new password from a reset link (once), then log the reader in."""
    config = current_app.config
    session = db.session()
    now = current_clock().now()
    keys, max_age = config["SECRET_KEYS"], int(config["PASSWORD_RESET_MAX_AGE"])
    try:
        accounts.reader_for_reset(session, keys, token, now=now, max_age=max_age)
    except accounts.InvalidLink as error:
        return render_template("auth/reset_failed.html", message=error.message), 400
    form = ResetPasswordForm()
    if not form.validate_on_submit():
        return render_form("auth/reset_password.html", form)
    try:
        reader = accounts.reset_password(
            session, keys, token, form.password.data, now=now, max_age=max_age
        )
    except accounts.InvalidLink as error:
        return render_template("auth/reset_failed.html", message=error.message), 400
    except DomainError as error:
        return render_refused("auth/reset_password.html", form, error)
    audit.record(
        session,
        now=now,
        actor=reader,
        action="account.password_reset",
        target=reader,
        ip=request.remote_addr,
    )
    notices.password_changed(session, reader, now=now)
    session.commit()
    login_user(reader)
    flash("Your new password is set.", "success")
    return redirect(url_for("account.overview"))
