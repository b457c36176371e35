"""The Daily Meridian: a demo newspaper whose paywall is run by Tollgate.

A content site of its own (``flask --app app run --port 5001`` in this folder), not part of
Tollgate. Of Tollgate it uses only ``billing/services/tokens.py``, loaded by file path, and
Tollgate's pages and API over HTTP. How it works with Tollgate:

1. A paywalled article without a token that grants access shows the paywall box, whose buttons
   link to Tollgate's ``/access?client=<id>&return_to=<article url>``.
2. Tollgate sends the reader back to ``<article url>#tollgate_token=<token>``. ``static/token.js``
   posts the token to ``/session``, which verifies it and keeps it in this site's signed session
   cookie, and reloads the page without the fragment.
3. Every view of a paywalled article verifies the token locally (an HMAC: no network call).
4. When a token expires, the reader goes through ``/access`` again with ``prompt=none``:
   Tollgate never shows a page and sends them straight back, with a fresh token if they still
   have access (they notice nothing), or with ``#tollgate_error=login_required`` or
   ``access_denied`` and no token (they see the paywall again). A token only ever grants; an
   invalid one, or one issued to another site, just shows the paywall.
5. A visitor without a token that grants access may still read from an organisation's network:
   the site asks Tollgate's API (``GET /api/v1/entitlement?ip=``), and keeps the answer a minute.

Settings (environment variables, with development defaults that match ``flask billing
seed-demo``): ``TOLLGATE_URL``, ``TOLLGATE_CLIENT_ID``, ``TOLLGATE_API_KEY``,
``TOLLGATE_TOKEN_KEYS`` (this client's token keys as Tollgate showed them, ``tk_...``,
comma-separated: never Tollgate's ``SECRET_KEYS``) and ``NEWSPAPER_SECRET``.
``create_app(config)`` takes the same keys, and ``CLOCK`` (anything with ``now()``) for tests.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import logging
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

HERE = Path(__file__).resolve().parent
TOKENS_PY = HERE.parent.parent / "billing" / "services" / "tokens.py"

DEV_TOLLGATE_URL = "http://127.0.0.1:5000"
DEV_CLIENT_ID = "cli_demo-newspaper"
DEV_API_KEY = "tg_newsdemo.demo-newspaper-key-for-local-use-only-00000"
DEV_TOKEN_KEY = "tk_newsdemo.demo-newspaper-token-key-local-use-only-000"  # noqa: S105
DEV_NEWSPAPER_SECRET = "dev-newspaper-secret-change-me"  # noqa: S105
TOKEN_SESSION_KEY = "tollgate"  # noqa: S105 - a name, not a secret
VISITOR_ADDRESS_KEY = "dev_visitor_address"
RENEWING_SESSION_KEY = "tollgate_renewing_since"
API_TIMEOUT_SECONDS = 2.0

log = logging.getLogger("newspaper")


def load_tokens(path: Path = TOKENS_PY) -> ModuleType:
    """Tollgate's token module, loaded from its file alone (it needs only ``itsdangerous``)."""
    name = "tollgate_tokens"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load Tollgate's token module from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tokens = load_tokens()


@dataclass(frozen=True)
class Article:
    """One (fictional) article."""

    slug: str
    title: str
    standfirst: str
    body: tuple[str, ...]
    section: str
    date: str
    free: bool


ARTICLES: tuple[Article, ...] = (
    Article(
        slug="council-tests-four-day-week",
        title="Council agrees to test a four-day week, for its own translators only",
        standfirst="A pilot in the fictional Council of Northern Provinces starts in spring.",
        body=(
            "After eleven hours of talks, ministers of the Council of Northern Provinces agreed "
            "to let their interpreters and translators work four days a week for six months.",
            "The trial will be judged on one measure: whether the minutes still arrive before the "
            "next meeting. Unions called it a start; one minister called it a precedent.",
        ),
        section="Institutions",
        date="24 November 2026",
        free=True,
    ),
    Article(
        slug="veldoria-coalition-talks",
        title="Coalition talks in Veldoria stall over the colour of a new ministry",
        standfirst="Three parties agree on the budget, the pensions and the railways. Not on teal.",
        body=(
            "Negotiators in the imaginary Republic of Veldoria have settled every chapter of their "
            "coalition agreement except one: the logo of the new Ministry of Long-Term Planning.",
            "The Greens want teal, the Liberals want a neutral grey and the Agrarian Union says "
            "the question should be put to a referendum, possibly in 2031.",
            "Observers note that the ministry's first task, according to the draft, is to plan "
            "the next coalition talks.",
        ),
        section="Politics",
        date="23 November 2026",
        free=False,
    ),
    Article(
        slug="single-time-zone-proposal",
        title="MEP proposes one time zone for the whole Union, then misses the vote",
        standfirst="The invented member for Lower Estrava blames her alarm clock.",
        body=(
            "Ilse Varnholt, a fictional member of the European Parliament, tabled an amendment "
            "putting every member state on the same clock, 'so that meetings start on time'.",
            "The amendment fell by four votes. Ms Varnholt arrived ten minutes after the roll call, "
            "having set her alarm, she said, to the wrong time zone.",
        ),
        section="Parliament",
        date="21 November 2026",
        free=False,
    ),
    Article(
        slug="croissant-origin-labels",
        title="Bakeries brace for origin labels on croissants",
        standfirst="A made-up regulation asks where the butter was born.",
        body=(
            "Under a proposal that exists only in this demo, every croissant sold in the Union "
            "would carry a label naming the country of its flour, its butter and its baker.",
            "Bakers' associations warn that the label may be larger than the croissant.",
        ),
        section="Economy",
        date="20 November 2026",
        free=True,
    ),
    Article(
        slug="committee-on-long-meetings",
        title="Inside the Committee on Very Long Meetings",
        standfirst="It has met 412 times. It has never finished an agenda.",
        body=(
            "The committee, invented for this newspaper, was set up in 2009 to shorten meetings. "
            "Its first session lasted nineteen hours.",
            "Its chair, Dr Anton Mereval (also fictional), says progress is real: 'This year we "
            "agreed on the length of the coffee break. Next year, the agenda.'",
        ),
        section="Institutions",
        date="18 November 2026",
        free=False,
    ),
    Article(
        slug="archive-lindmark-treaty",
        title="From the archive: how the Lindmark treaty nearly sank in 2006",
        standfirst="Twenty years of archives: the night a ferry timetable almost ended a treaty.",
        body=(
            "In this fictional episode from our archive, negotiators of the Lindmark harbour "
            "treaty discovered at 3 a.m. that their ferries ran on two different timetables.",
            "The treaty was saved by a junior clerk who printed both timetables on one page.",
        ),
        section="Archive",
        date="2 March 2006",
        free=False,
    ),
)
ARTICLES_BY_SLUG = {article.slug: article for article in ARTICLES}


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        """The current moment."""
        return datetime.now(UTC)


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The newspaper's settings from environment variables, with the demo's defaults."""
    env = os.environ if environ is None else environ
    return {
        "TOLLGATE_URL": (env.get("TOLLGATE_URL") or DEV_TOLLGATE_URL).rstrip("/"),
        "TOLLGATE_CLIENT_ID": env.get("TOLLGATE_CLIENT_ID") or DEV_CLIENT_ID,
        "TOLLGATE_API_KEY": env.get("TOLLGATE_API_KEY") or DEV_API_KEY,
        "TOLLGATE_TOKEN_KEYS": _csv(env.get("TOLLGATE_TOKEN_KEYS") or DEV_TOKEN_KEY),
        "SECRET_KEY": env.get("NEWSPAPER_SECRET") or DEV_NEWSPAPER_SECRET,
        "IP_CHECK_TTL": 60,
        "IP_CHECK_FAILURE_TTL": 10,
        "RENEW_RETRY_AFTER": 60,
        "DEV_BROWSE_AS_ADDRESS": (env.get("NEWSPAPER_ENV") or "development") == "development",
        # Tollgate runs on the same host in the demo, and cookies do not care about ports.
        "SESSION_COOKIE_NAME": "meridian_session",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
    }


@dataclass(frozen=True)
class Access:
    """Whether this visitor may read paywalled articles, and why."""

    granted: bool
    reason: str | None = None
    until: datetime | None = None
    by_network: bool = False


class Paywall:
    """Token verification and the IP check against one Tollgate, as one API client."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.tollgate_url: str = str(config["TOLLGATE_URL"]).rstrip("/")
        self.client_id: str = config["TOLLGATE_CLIENT_ID"]
        self.api_key: str = config["TOLLGATE_API_KEY"]
        self.verifier = tokens.TokenSigner(
            list(config["TOLLGATE_TOKEN_KEYS"]), client_id=self.client_id
        )
        self.ip_ttl = timedelta(seconds=int(config["IP_CHECK_TTL"]))
        self.ip_failure_ttl = timedelta(seconds=int(config["IP_CHECK_FAILURE_TTL"]))
        self._ip_answers: dict[str, tuple[Access, datetime]] = {}
        self._lock = threading.Lock()

    def verify(self, token: str, now: datetime) -> Any:
        """The claims of a genuine, unexpired token issued to this site.

        Raises ``tokens.TokenExpired`` or ``tokens.TokenInvalid`` (also for another site's token).
        """
        return self.verifier.verify(token, now=now)

    def access_url(self, return_to: str, **extra: str) -> str:
        """Tollgate's ``/access`` address that comes back to ``return_to``."""
        query = urlencode({"client": self.client_id, "return_to": return_to, **extra})
        return f"{self.tollgate_url}/access?{query}"

    def network_access(self, ip: str | None, now: datetime) -> Access:
        """Whether an anonymous visitor from ``ip`` may read, asked of Tollgate, kept briefly."""
        if not ip:
            return Access(granted=False)
        with self._lock:
            cached = self._ip_answers.get(ip)
        if cached is not None and now < cached[1]:
            return cached[0]
        answer = self._ask_about(ip)
        access = answer or Access(granted=False)
        expires = now + (self.ip_ttl if answer is not None else self.ip_failure_ttl)
        with self._lock:
            if len(self._ip_answers) > 10_000:
                self._ip_answers.clear()
            self._ip_answers[ip] = (access, expires)
        return access

    def _ask_about(self, ip: str) -> Access | None:
        """Tollgate's decision for an anonymous visitor from ``ip``; None when it cannot answer."""
        request_ = urllib.request.Request(  # noqa: S310 - the configured Tollgate, http(s)
            f"{self.tollgate_url}/api/v1/entitlement?{urlencode({'ip': ip})}",
            headers={"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request_, timeout=API_TIMEOUT_SECONDS) as response:  # noqa: S310
                body = json.load(response)
        except (OSError, ValueError) as exc:
            log.warning("Tollgate's IP check failed: %s", exc)
            return None
        if not isinstance(body, dict) or not isinstance(body.get("granted"), bool):
            log.warning("Tollgate's IP check answered something unexpected: %r", body)
            return None
        return Access(granted=body["granted"], reason=body.get("reason"), by_network=True)


def _paywall() -> Paywall:
    return current_app.extensions["paywall"]  # type: ignore[no-any-return]


def _visitor_address() -> str | None:
    """The visitor's address (``remote_addr``, as the server or its trusted proxy set it); in
    development, the one chosen at ``/dev/visit-from``."""
    if current_app.config["DEV_BROWSE_AS_ADDRESS"]:
        chosen = session.get(VISITOR_ADDRESS_KEY)
        if isinstance(chosen, str):
            return chosen
    return request.remote_addr


def _now() -> datetime:
    return current_app.config["CLOCK"].now()  # type: ignore[no-any-return]


def _token_access(now: datetime) -> tuple[Access | None, bool]:
    """What the stored token grants (None: no usable token), and whether it just expired."""
    stored = session.get(TOKEN_SESSION_KEY)
    if not isinstance(stored, dict) or not isinstance(stored.get("token"), str):
        return None, False
    try:
        claims = _paywall().verify(stored["token"], now)
    except tokens.TokenExpired:
        session.pop(TOKEN_SESSION_KEY, None)
        return None, True
    except tokens.TokenInvalid:
        session.pop(TOKEN_SESSION_KEY, None)
        return None, False
    return Access(granted=True, reason=claims.reason, until=claims.until), False


def _may_renew(now: datetime) -> bool:
    """Whether to send the reader through Tollgate again (not twice in a row: no loops)."""
    since = session.get(RENEWING_SESSION_KEY)
    retry_after = int(current_app.config["RENEW_RETRY_AFTER"])
    if isinstance(since, int | float) and now.timestamp() - since < retry_after:
        return False
    session[RENEWING_SESSION_KEY] = now.timestamp()
    return True


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The newspaper app; ``config`` overrides the settings from the environment."""
    app = Flask(__name__, root_path=str(HERE))
    app.config.update(settings_from_env())
    if config:
        app.config.update(config)
    app.config.setdefault("CLOCK", SystemClock())
    app.extensions["paywall"] = Paywall(app.config)
    app.jinja_env.globals["long_date"] = lambda moment: f"{moment.day} {moment:%B %Y}"
    app.jinja_env.globals["tollgate_url"] = app.extensions["paywall"].tollgate_url
    app.jinja_env.globals["has_token"] = lambda: isinstance(session.get(TOKEN_SESSION_KEY), dict)

    tollgate_origin = "/".join(app.extensions["paywall"].tollgate_url.split("/")[:3])

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; connect-src 'self'; style-src 'self'; "
            "img-src 'self' data:; frame-ancestors 'none'; base-uri 'self'; "
            # Logging out here goes on to Tollgate's log-out page (a redirect after a form).
            f"form-action 'self' {tollgate_origin}",
        )
        response.headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.get("/")
    def front() -> str:
        """The front page: every article, free or for subscribers."""
        return render_template("front.html", articles=ARTICLES)

    @app.get("/articles/<slug>")
    def article(slug: str) -> Any:
        """An article: free ones for all; paywalled ones with a token or an organisation's network."""
        story = ARTICLES_BY_SLUG.get(slug) or abort(404)
        if story.free:
            return render_template("article.html", article=story, access=None)
        now = _now()
        access, expired_grant = _token_access(now)
        here = url_for("article", slug=slug, _external=True)
        if expired_grant and _may_renew(now):
            return redirect(_paywall().access_url(here, prompt="none"))
        if access is None:
            by_network = _paywall().network_access(_visitor_address(), now)
            if by_network.granted:
                access = by_network
        if access is not None:
            return render_template("article.html", article=story, access=access)
        return render_template(
            "article.html",
            article=story,
            access=None,
            access_url=_paywall().access_url(here),
            trial_url=_paywall().access_url(here, offer="trial"),
        )

    @app.get("/dev/visit-from")
    def visit_from() -> Any:
        """Development only: browse as a visitor from ``?ip=`` (empty: from your own address)."""
        if not app.config["DEV_BROWSE_AS_ADDRESS"]:
            abort(404)
        wanted = (request.args.get("ip") or "").strip()
        if not wanted:
            session.pop(VISITOR_ADDRESS_KEY, None)
        else:
            try:
                session[VISITOR_ADDRESS_KEY] = str(ipaddress.ip_address(wanted))
            except ValueError:
                return "Not an IP address.", 400
        return redirect(url_for("front"))

    @app.get("/about")
    def about() -> str:
        """The demo's terms, privacy policy and imprint (Tollgate's footer links here)."""
        return render_template("about.html")

    @app.post("/logout")
    def log_out() -> Any:
        """Forget the reader's token here, then log them out of Tollgate too."""
        session.pop(TOKEN_SESSION_KEY, None)
        session.pop(RENEWING_SESSION_KEY, None)
        return redirect(f"{_paywall().tollgate_url}/logout", code=303)

    @app.post("/session")
    def store_token() -> Any:
        """Keep the token Tollgate sent back (posted by ``static/token.js``) in the session."""
        origin = request.headers.get("Origin")
        if origin is not None and origin != request.host_url.rstrip("/"):
            return jsonify(stored=False, error="cross-origin"), 403
        body = request.get_json(silent=True)
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            return jsonify(stored=False, error='send the token as JSON: {"token": ...}'), 400
        try:
            claims = _paywall().verify(token, _now())
        except tokens.TokenExpired:
            return jsonify(stored=False, error="expired"), 400
        except tokens.TokenInvalid:
            return jsonify(stored=False, error="invalid"), 400
        session[TOKEN_SESSION_KEY] = {"token": token}
        session.pop(RENEWING_SESSION_KEY, None)
        return jsonify(stored=True, reason=claims.reason)

    return app


app = create_app()
