"""The content site's paywall redirect: ``/access?client=<id>&return_to=<url>``.

The content site sends a reader here from its paywall box; the reader comes back to ``return_to``
with a fresh access token in the fragment, ``<return_to>#tollgate_token=<token>`` (a fragment is
never sent to a server, so the token is in no access log and no ``Referer``).

- ``client`` must be a known API client that is not revoked, and ``return_to`` must be on one of
  its allowed origins exactly (scheme, host and port); anything else gets a 400 page, never a
  redirect (:func:`checked_return_to` has the rules).
- ``client`` must also have a token key that signs (its own key set: never ``SECRET_KEYS``);
  otherwise the reader gets a 400 page saying the site is not set up yet.
- A reader whose decision grants access (by account, or by the office network they are on) goes
  straight back (302) with a token. **A token only ever grants**: a refusal is never signed.
- A logged-in reader without access sees why, the offers that apply to them, and "Back to the
  article", which returns to ``<return_to>#tollgate_error=access_denied``.
- A visitor who is not logged in sees the offers: log in, start the free trial, subscribe, access
  through their organisation. Every link carries ``next=/access?...`` through log-in, sign-up,
  e-mail verification and trial start, so the reader ends up back here, and from here on the site.
- ``prompt=none`` never shows a page, as in OpenID Connect: a reader with access goes back with a
  token, anyone else goes back with no token to ``<return_to>#tollgate_error=login_required`` (not
  logged in) or ``#tollgate_error=access_denied`` (logged in, no access). The content site uses it
  to renew an expired token without interrupting the reader.

Tokens are issued only here and by the API, from the decision taken at that moment: a reader who
logs out or loses access gets no new token, and the one they hold expires within
``ACCESS_TOKEN_TTL`` seconds (content sites that cannot wait ask the API in real time).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from urllib.parse import urlencode, urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user

from billing import db
from billing.clock import current_clock
from billing.errors import DomainError, NotFound, ValidationFailed
from billing.inputs import InvalidText
from billing.models import ApiClient, Reader
from billing.services import api_clients, entitlements, groups, payments, token_keys, trials
from billing.services.entitlements import Decision, Reason
from billing.services.tokens import TokenSigner
from billing.views import guards
from billing.views.account import REASON_WORDS
from billing.views.forms import ButtonForm

bp = Blueprint("access", __name__)

TOKEN_PARAMETER = "tollgate_token"  # noqa: S105 - a name, not a secret
"""The name of the token in the fragment of the address the reader is sent back to."""
ERROR_PARAMETER = "tollgate_error"
"""The name of the error in that fragment when there is no token (OpenID Connect's words)."""
LOGIN_REQUIRED = "login_required"
ACCESS_DENIED = "access_denied"
RETURN_TO_MAX_LENGTH = 2048
CLIENT_ID_MAX_LENGTH = 32
_SCHEMES = ("http", "https")


class BadAccessLink(DomainError):
    """The content site's link cannot be followed: unknown client, or a ``return_to`` not allowed."""

    code = "bad_access_link"


@bp.errorhandler(BadAccessLink)
@bp.errorhandler(InvalidText)
def _bad_link(error: DomainError) -> ResponseReturnValue:
    return render_template("access/bad_link.html", message=error.message), 400


@bp.after_request
def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def checked_return_to(raw: str | None, allowed_origins: Iterable[str]) -> str:
    """The address to send the reader back to, rebuilt from ``raw``; BadAccessLink if not allowed.

    ``raw`` must be an absolute http(s) address of printable ASCII (no spaces, control characters
    or backslashes), without user name or password, whose origin (scheme, lower-cased host, port
    with the default one dropped) is exactly one of ``allowed_origins``. The result is that origin
    followed by the path and query of ``raw`` (its fragment is dropped: the token goes there).
    """
    refused = BadAccessLink(
        "The address to send you back to is not one this site may use, so we will not go there.",
        field="return_to",
    )
    value = raw or ""
    if not value:
        raise BadAccessLink("The link does not say where to send you back to.", field="return_to")
    if len(value) > RETURN_TO_MAX_LENGTH or "\\" in value:
        raise refused
    if any(not "!" <= ch <= "~" for ch in value):
        raise refused
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise refused from exc
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES or not value.lower().startswith(f"{scheme}://"):
        raise refused
    if not parts.netloc or any(ch in parts.netloc for ch in "@%"):
        raise refused
    try:
        origin = api_clients.normalise_origin(f"{scheme}://{parts.netloc}")
    except ValidationFailed as exc:
        raise refused from exc
    if origin not in set(allowed_origins):
        raise refused
    path = parts.path or "/"
    if path.startswith("//"):
        raise refused
    return origin + path + (f"?{parts.query}" if parts.query else "")


def access_path(client_id: str, return_to: str) -> str:
    """The local path of this page for ``client_id`` and ``return_to``, fully encoded for ``next``."""
    return "/access?" + urlencode({"client": client_id, "return_to": return_to})


def _client(public_id: str | None) -> ApiClient:
    """The active API client named in the link; BadAccessLink otherwise."""
    if not public_id:
        raise BadAccessLink("The link does not say which site sent you here.", field="client")
    unknown = BadAccessLink(
        "The site that sent you here is not known to us, so we cannot send you back.",
        field="client",
    )
    if len(public_id) > CLIENT_ID_MAX_LENGTH:
        raise unknown
    try:
        client = api_clients.by_public_id(db.session(), public_id)
    except NotFound as exc:
        raise unknown from exc
    if client.revoked_at is not None:
        raise BadAccessLink(
            "The site that sent you here may no longer use our service, so we cannot send you back.",
            field="client",
        )
    return client


def _decide(reader: Reader | None, now: datetime) -> Decision:
    """The reader's decision, or the visitor's address's when that grants and the reader's does not."""
    decision = guards.decision_for(reader, now)
    if not decision.granted and request.remote_addr:
        by_address = guards.decision_for(None, now, ip=request.remote_addr)
        if by_address.granted:
            return by_address
    return decision


def _signer(client: ApiClient, now: datetime) -> TokenSigner:
    """The signer of ``client``'s tokens; BadAccessLink when the client has no key that signs."""
    try:
        return token_keys.signer_for(
            db.session(),
            client,
            wrapper=token_keys.current_wrapper(),
            now=now,
            ttl=timedelta(seconds=int(current_app.config["ACCESS_TOKEN_TTL"])),
        )
    except token_keys.NoTokenKey as exc:
        raise BadAccessLink(
            "The site that sent you here is not set up to receive readers yet, so we cannot "
            "send you back. Please tell the site.",
            field="client",
        ) from exc


def _came_from_our_pages() -> bool:
    """Whether this request follows one of our own pages (a form's redirect chain, a link here)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site == "same-origin"
    referrer = request.referrer or ""
    return referrer.startswith(request.host_url)


def _send_back(destination: str) -> ResponseReturnValue:
    """Go to ``destination``: a 302, or a page that moves on when a form of ours led here.

    Browsers apply our ``form-action 'self'`` to every redirect that follows a form submission
    (log-in, trial start), so such a chain may not end in a redirect to the content site; a page
    that refreshes to it starts a new navigation instead.
    """
    if _came_from_our_pages():
        return make_response(render_template("access/continue.html", destination=destination))
    return redirect(destination, code=302)


@bp.get("/access")
def access() -> ResponseReturnValue:
    """Send the reader back to the content site with a token, or show what would give access."""
    client = _client(request.args.get("client"))
    return_to = checked_return_to(request.args.get("return_to"), client.allowed_origins)
    here = access_path(client.public_id, return_to)
    now = current_clock().now()
    reader = guards.reader() if current_user.is_authenticated else None
    signer = _signer(client, now)
    try:
        token, _expires_at, decision = entitlements.issue_token(
            signer,
            lambda at: _decide(reader, at),
            reader_id=reader.public_id if reader is not None else None,
            now=now,
        )
    except entitlements.AccessRefused as refused:
        decision = refused.decision
    else:
        if reader is not None and decision.reason == Reason.GROUP_SEAT:
            groups.note_reading(db.session(), reader, decision.group, now=now)
            db.session().commit()
        return _send_back(f"{return_to}#{TOKEN_PARAMETER}={token}")
    error = LOGIN_REQUIRED if reader is None else ACCESS_DENIED
    back = f"{return_to}#{ERROR_PARAMETER}={error}"
    if request.args.get("prompt") == "none":
        return _send_back(back)
    days = int(current_app.config["TRIAL_DAYS"])
    subscribe_url = url_for("payments.subscribe", next=here)
    trial_url = url_for("account.trial", next=here)
    if request.args.get("offer") == "trial":
        # The paywall's "Start your free trial" goes straight to where the trial starts.
        if reader is None:
            return redirect(url_for("auth.signup", next=trial_url))
        if trials.refusal_reason(db.session(), reader) is None:
            return redirect(trial_url)
    if reader is None:
        return render_template(
            "access/offers.html",
            here=here,
            return_to=return_to,
            days=days,
            subscribe_url=subscribe_url,
            trial_url=trial_url,
            plans=payments.reader_plans(db.session()),
            seat_plans=payments.group_plans(db.session()),
            trial_ends=now + timedelta(days=days),
        )
    return render_template(
        "access/refused.html",
        reader=reader,
        decision=decision,
        reason_words=REASON_WORDS.get(decision.reason, decision.reason.value),
        trial_refusal=trials.refusal_reason(db.session(), reader),
        here=here,
        back=back,
        days=days,
        subscribe_url=subscribe_url,
        plans=payments.reader_plans(db.session()),
        form=ButtonForm(),
    )
