"""Settings, read from environment variables with safe development defaults.

Nothing here needs configuring to run locally: the defaults give SQLite in ``instance/``, mail to
the console and the dev outbox, and localstripe as the Stripe stand-in. Production sets
``TOLLGATE_ENV=production`` and the variables listed in the README; the app then refuses to start
while any secret still has its development value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEV_SECRET = "dev-secret-change-me"  # noqa: S105 - the marker refused in production
DEV_WEBHOOK_SECRET = "whsec_dev_tollgate"  # noqa: S105
DEV_TOKEN_KEY_WRAPPING_SECRET = "dev-token-key-wrapping-change-me"  # noqa: S105
LOCALSTRIPE_SECRET_KEY = "sk_test_localstripe"  # noqa: S105
INSTANCE_DIR = Path(__file__).resolve().parent.parent / "instance"


class ConfigError(RuntimeError):
    """The configuration is unsafe or inconsistent; the message says which setting."""


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@dataclass(frozen=True)
class Setting:
    """One documented environment variable (the README's configuration table is built from these)."""

    name: str
    default: str
    meaning: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "TOLLGATE_ENV",
        "development",
        "`development` or `production` (production refuses dev secrets, sets secure cookies and HSTS)",
    ),
    Setting(
        "DATABASE_URL",
        "sqlite:///instance/tollgate.sqlite3",
        "SQLAlchemy URL; `postgresql://...` in production (psycopg 3 is used)",
    ),
    Setting(
        "SECRET_KEYS",
        DEV_SECRET,
        "comma-separated; the first signs sessions and e-mail links (each with its own salt), all verify (rotation); never access tokens",
    ),
    Setting(
        "TOKEN_KEY_WRAPPING_SECRETS",
        DEV_TOKEN_KEY_WRAPPING_SECRET,
        "comma-separated; the first encrypts the API clients' token keys in the database, all decrypt (rotation: `billing api-client rewrap-token-keys`)",
    ),
    Setting("TRIAL_DAYS", "14", "length of the free trial in days"),
    Setting(
        "TRIAL_REMINDER_DAYS", "3", "how many days before the trial ends the reminder mail goes out"
    ),
    Setting("PAST_DUE_GRACE_DAYS", "7", "days a reader keeps access while a payment is failing"),
    Setting("EMAIL_VERIFY_MAX_AGE", "172800", "seconds an e-mail verification link stays valid"),
    Setting("PASSWORD_RESET_MAX_AGE", "3600", "seconds a password reset link stays valid"),
    Setting(
        "SMTP_URL",
        "",
        "`smtp://user:pass@host:587` (STARTTLS) or `smtps://...`; empty: the worker prints mail to the console (the dev outbox page shows every mail)",
    ),
    Setting("MAIL_FROM", "Tollgate <no-reply@example.org>", "sender of every mail"),
    Setting(
        "REDIS_URL",
        "",
        "Redis for rate-limit counters; empty: each process counts on its own, in memory (with N gunicorn workers a client gets up to N times each limit)",
    ),
    Setting("RATELIMIT_LOGIN", "10 per minute;50 per hour", "login attempts per client address"),
    Setting("RATELIMIT_SIGNUP", "5 per minute;30 per hour", "sign-ups per client address"),
    Setting(
        "RATELIMIT_RESET", "5 per minute;20 per hour", "password reset requests per client address"
    ),
    Setting("RATELIMIT_TRIAL", "5 per minute;20 per hour", "trial starts per client address"),
    Setting(
        "RATELIMIT_CARD",
        "10 per minute;30 per hour",
        "card set-ups per client address (stops card testing through the subscribe form)",
    ),
    Setting(
        "RATELIMIT_API",
        "600 per minute",
        "token issues and reader look-ups per API key (entitlement checks are not limited)",
    ),
    Setting(
        "API_CLIENT_CACHE_TTL",
        "5",
        "seconds a process trusts an API key it has checked (a revoked key stops working within this)",
    ),
    Setting("PUBLIC_BASE_URL", "http://127.0.0.1:5000", "absolute base for links in mails"),
    Setting(
        "STRIPE_SECRET_KEY",
        LOCALSTRIPE_SECRET_KEY,
        "Stripe secret key; the default talks to localstripe",
    ),
    Setting(
        "STRIPE_PUBLISHABLE_KEY", "pk_test_localstripe", "Stripe publishable key for Stripe.js"
    ),
    Setting(
        "STRIPE_API_BASE",
        "http://127.0.0.1:8420",
        "Stripe API base URL; `https://api.stripe.com` in production",
    ),
    Setting(
        "STRIPE_JS_URL",
        "http://127.0.0.1:8420/js.stripe.com/v3/",
        "where the card form loads Stripe.js from",
    ),
    Setting(
        "STRIPE_WEBHOOK_SECRETS",
        DEV_WEBHOOK_SECRET,
        "comma-separated webhook signing secrets (rotation)",
    ),
    Setting(
        "STRIPE_MAX_NETWORK_RETRIES",
        "2",
        "how often a failed call to Stripe is retried (safe: creations carry idempotency keys)",
    ),
    Setting(
        "ACCESS_TOKEN_TTL", "900", "lifetime in seconds of an access token for the content site"
    ),
    Setting(
        "DECISION_CACHE_MAX_AGE",
        "30",
        "seconds a cached entitlement decision may be reused at most",
    ),
    Setting(
        "DECISION_CACHE_POLL_INTERVAL",
        "1",
        "seconds between each process's checks of the entitlement change log (how fast a change reaches every process)",
    ),
    Setting(
        "PROMETHEUS_MULTIPROC_DIR",
        "",
        "an empty directory shared by the gunicorn workers, so `/metrics` adds up all of them (read by prometheus-client)",
    ),
    Setting(
        "MAX_CONTENT_LENGTH",
        "1048576",
        "largest request body in bytes, for every page, the API and webhooks; larger is refused with 413 before it is read",
    ),
    Setting(
        "MAX_URL_LENGTH",
        "8000",
        "longest request address (path and query) in characters; longer is refused with 414",
    ),
    Setting(
        "PROXY_FIX_X_FOR",
        "0",
        "number of trusted proxies in front of the app whose `X-Forwarded-*` headers are believed",
    ),
    Setting("GROUP_MIN_SEATS", "3", "fewest seats an organisation can buy"),
    Setting("GROUP_INVITE_DAYS", "7", "days a group invitation link stays valid"),
    Setting(
        "GROUP_INVOICE_DAYS_UNTIL_DUE",
        "30",
        "days an organisation paying by invoice / bank transfer has to pay each invoice",
    ),
    Setting(
        "GROUP_IDLE_DAYS",
        "60",
        "days without reading after which a group member's seat is listed as idle for reclaiming",
    ),
    Setting(
        "GROUP_WIDEST_IPV4", "16", "widest IPv4 office range an organisation may register (prefix)"
    ),
    Setting(
        "GROUP_WIDEST_IPV6", "48", "widest IPv6 office range an organisation may register (prefix)"
    ),
    Setting(
        "GROUP_IP_SESSIONS_FLUSH_INTERVAL",
        "60",
        "seconds each process gathers anonymous IP sessions in memory before writing them (after a response, never during one)",
    ),
    Setting(
        "PUBLISHER_COUNTRY",
        "BE",
        "ISO code of the EU member state the publisher is established in: its readers pay its domestic VAT rate, other EU readers their own (OSS); required in production (no default there)",
    ),
    Setting(
        "PUBLISHER_VAT_ID",
        "",
        "the publisher's own VAT number, printed on invoices, checked with python-stdnum as one issued by `PUBLISHER_COUNTRY`; required in production",
    ),
    Setting(
        "VAT_OUTSIDE_EU_RATE",
        "0",
        "VAT percentage included in prices for readers outside the EU (0 unless the publisher must charge VAT there)",
    ),
    Setting(
        "VIES_URL",
        "",
        "VIES REST base (`https://ec.europa.eu/taxation_customs/vies/rest-api`) to confirm organisations' VAT ids; empty: format and check digits only",
    ),
    Setting("VIES_TIMEOUT", "5", "seconds a VIES check may take before it counts as unanswered"),
    Setting(
        "PUBLICATION_NAME",
        "Tollgate",
        "the publication's name, shown on every page and in every mail (`make run`: the demo newspaper)",
    ),
    Setting(
        "PUBLICATION_URL",
        "",
        "the publication's home page; the header's name and logo link to it",
    ),
    Setting(
        "PUBLICATION_LOGO",
        "",
        "the logo: an `https://` URL, or the path of an SVG, PNG or JPEG file served at `/brand/logo`",
    ),
    Setting(
        "PUBLICATION_ACCENT",
        "#0b5fff",
        "accent colour of links and buttons, `#rgb` or `#rrggbb`",
    ),
    Setting("SUPPORT_EMAIL", "", "where readers write for help (page footer and every mail)"),
    Setting("TERMS_URL", "", "the terms of subscription (footer, sign-up form, mails)"),
    Setting("PRIVACY_URL", "", "the privacy policy (footer, sign-up form, mails)"),
    Setting("IMPRINT_URL", "", "the imprint / legal notice (footer, mails)"),
    Setting(
        "ECB_RATES_FILE",
        "",
        "the ECB's `eurofxref-hist.csv` for the VAT report; empty: the reviewed copy in `billing/data/`",
    ),
    Setting(
        "STRIPE_CONNECT_TIMEOUT",
        "2",
        "seconds to wait for a connection to Stripe (each try; keep (connect + read) x (retries + 1) under gunicorn's `--timeout`)",
    ),
    Setting(
        "STRIPE_READ_TIMEOUT",
        "5",
        "seconds to wait for each answer from Stripe before the call counts as failed (and is retried)",
    ),
    Setting(
        "SMTP_TIMEOUT",
        "10",
        "seconds to wait for the SMTP server to connect and to answer each command",
    ),
    Setting(
        "WORKER_MAX_ATTEMPTS",
        "12",
        "attempts at a webhook event or a mail before it is dead (kept, counted, replayable)",
    ),
    Setting(
        "WORKER_RETRY_BASE",
        "10",
        "seconds before the first retry of a failed event or mail; doubled after each failure",
    ),
    Setting("WORKER_RETRY_CAP", "3600", "the longest wait in seconds between two retries"),
    Setting(
        "WORKER_LEASE",
        "120",
        "seconds a worker holds what it claimed; a killed worker's events and mails are taken over after this",
    ),
    Setting(
        "WORKER_POLL_INTERVAL",
        "1",
        "seconds an idle worker waits before looking for new events and mails again",
    ),
    Setting(
        "WEBHOOK_MAX_BYTES",
        "262144",
        "largest webhook body read (before its signature is checked); larger ones are answered 413",
    ),
    Setting(
        "READYZ_TIMEOUT",
        "2",
        "seconds `/readyz` waits for the database before answering 503",
    ),
)
BRAND_SETTINGS = (
    "PUBLICATION_NAME",
    "PUBLICATION_URL",
    "PUBLICATION_LOGO",
    "PUBLICATION_ACCENT",
    "SUPPORT_EMAIL",
    "TERMS_URL",
    "PRIVACY_URL",
    "IMPRINT_URL",
)
"""The publication's brand and legal links (checked by :func:`billing.branding.brand_from`)."""
_DEFAULTS = {setting.name: setting.default for setting in SETTINGS}


def from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Build the Flask config mapping from environment variables (``os.environ`` by default)."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str:
        value = env.get(name, "")
        return value if value != "" else _DEFAULTS[name]

    def number(name: str, kind: type[int] | type[float] = int) -> Any:
        try:
            return kind(get(name))
        except ValueError as exc:
            raise ConfigError(f"{name} must be a number, got {get(name)!r}") from exc

    environment = get("TOLLGATE_ENV")
    if environment not in {"development", "production"}:
        raise ConfigError(
            f"TOLLGATE_ENV must be 'development' or 'production', got {environment!r}"
        )
    production = environment == "production"
    database_url = get("DATABASE_URL")
    if database_url == _DEFAULTS["DATABASE_URL"]:
        database_url = f"sqlite:///{INSTANCE_DIR / 'tollgate.sqlite3'}"
    secret_keys = _csv(get("SECRET_KEYS"))
    return {
        "TOLLGATE_ENV": environment,
        "DEV_MODE": not production,
        "DATABASE_URL": database_url,
        "SECRET_KEYS": secret_keys,
        "SECRET_KEY": secret_keys[0] if secret_keys else "",
        "TOKEN_KEY_WRAPPING_SECRETS": _csv(get("TOKEN_KEY_WRAPPING_SECRETS")),
        "TRIAL_DAYS": number("TRIAL_DAYS"),
        "TRIAL_REMINDER_DAYS": number("TRIAL_REMINDER_DAYS"),
        "PAST_DUE_GRACE_DAYS": number("PAST_DUE_GRACE_DAYS"),
        "EMAIL_VERIFY_MAX_AGE": number("EMAIL_VERIFY_MAX_AGE"),
        "PASSWORD_RESET_MAX_AGE": number("PASSWORD_RESET_MAX_AGE"),
        "SMTP_URL": get("SMTP_URL"),
        "MAIL_FROM": get("MAIL_FROM"),
        "REDIS_URL": get("REDIS_URL"),
        "RATELIMIT_LOGIN": get("RATELIMIT_LOGIN"),
        "RATELIMIT_SIGNUP": get("RATELIMIT_SIGNUP"),
        "RATELIMIT_RESET": get("RATELIMIT_RESET"),
        "RATELIMIT_TRIAL": get("RATELIMIT_TRIAL"),
        "RATELIMIT_API": get("RATELIMIT_API"),
        "RATELIMIT_CARD": get("RATELIMIT_CARD"),
        "API_CLIENT_CACHE_TTL": number("API_CLIENT_CACHE_TTL", float),
        "PUBLIC_BASE_URL": get("PUBLIC_BASE_URL").rstrip("/"),
        "STRIPE_SECRET_KEY": get("STRIPE_SECRET_KEY"),
        "STRIPE_PUBLISHABLE_KEY": get("STRIPE_PUBLISHABLE_KEY"),
        "STRIPE_API_BASE": get("STRIPE_API_BASE").rstrip("/"),
        "STRIPE_JS_URL": get("STRIPE_JS_URL"),
        "STRIPE_WEBHOOK_SECRETS": _csv(get("STRIPE_WEBHOOK_SECRETS")),
        "STRIPE_MAX_NETWORK_RETRIES": number("STRIPE_MAX_NETWORK_RETRIES"),
        "ACCESS_TOKEN_TTL": number("ACCESS_TOKEN_TTL"),
        "DECISION_CACHE_MAX_AGE": number("DECISION_CACHE_MAX_AGE", float),
        "DECISION_CACHE_POLL_INTERVAL": number("DECISION_CACHE_POLL_INTERVAL", float),
        "PROXY_FIX_X_FOR": number("PROXY_FIX_X_FOR"),
        "GROUP_MIN_SEATS": number("GROUP_MIN_SEATS"),
        "GROUP_INVITE_DAYS": number("GROUP_INVITE_DAYS"),
        "GROUP_INVOICE_DAYS_UNTIL_DUE": number("GROUP_INVOICE_DAYS_UNTIL_DUE"),
        "GROUP_IDLE_DAYS": number("GROUP_IDLE_DAYS"),
        "GROUP_WIDEST_IPV4": number("GROUP_WIDEST_IPV4"),
        "GROUP_WIDEST_IPV6": number("GROUP_WIDEST_IPV6"),
        "GROUP_IP_SESSIONS_FLUSH_INTERVAL": number("GROUP_IP_SESSIONS_FLUSH_INTERVAL", float),
        "MAX_CONTENT_LENGTH": number("MAX_CONTENT_LENGTH"),
        "MAX_URL_LENGTH": number("MAX_URL_LENGTH"),
        # Production gets no default country: the publisher must say where it is established.
        "PUBLISHER_COUNTRY": (
            env.get("PUBLISHER_COUNTRY", "") if production else get("PUBLISHER_COUNTRY")
        )
        .strip()
        .upper(),
        "PUBLISHER_VAT_ID": get("PUBLISHER_VAT_ID").strip(),
        "VAT_OUTSIDE_EU_RATE": get("VAT_OUTSIDE_EU_RATE").strip(),
        "VIES_URL": get("VIES_URL").strip().rstrip("/"),
        "VIES_TIMEOUT": number("VIES_TIMEOUT", float),
        **{name: get(name).strip() for name in BRAND_SETTINGS},
        "ECB_RATES_FILE": get("ECB_RATES_FILE"),
        "STRIPE_CONNECT_TIMEOUT": number("STRIPE_CONNECT_TIMEOUT", float),
        "STRIPE_READ_TIMEOUT": number("STRIPE_READ_TIMEOUT", float),
        "SMTP_TIMEOUT": number("SMTP_TIMEOUT", float),
        "WORKER_MAX_ATTEMPTS": number("WORKER_MAX_ATTEMPTS"),
        "WORKER_RETRY_BASE": number("WORKER_RETRY_BASE", float),
        "WORKER_RETRY_CAP": number("WORKER_RETRY_CAP", float),
        "WORKER_LEASE": number("WORKER_LEASE", float),
        "WORKER_POLL_INTERVAL": number("WORKER_POLL_INTERVAL", float),
        "WEBHOOK_MAX_BYTES": number("WEBHOOK_MAX_BYTES"),
        "READYZ_TIMEOUT": number("READYZ_TIMEOUT", float),
        "SESSION_COOKIE_SECURE": production,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": production,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "PREFERRED_URL_SCHEME": "https" if production else "http",
    }


def check(config: dict[str, Any]) -> None:
    """Refuse settings that are unsafe for the environment they run in."""
    if not config.get("SECRET_KEYS"):
        raise ConfigError("SECRET_KEYS must name at least one secret")
    if not config.get("TOKEN_KEY_WRAPPING_SECRETS"):
        raise ConfigError("TOKEN_KEY_WRAPPING_SECRETS must name at least one secret")
    _check_vat(config)
    if config.get("TOLLGATE_ENV") != "production":
        return
    if DEV_SECRET in config["SECRET_KEYS"] or any(len(k) < 32 for k in config["SECRET_KEYS"]):
        raise ConfigError("SECRET_KEYS: production needs real secrets of at least 32 characters")
    wrapping = config["TOKEN_KEY_WRAPPING_SECRETS"]
    if DEV_TOKEN_KEY_WRAPPING_SECRET in wrapping or any(len(k) < 32 for k in wrapping):
        raise ConfigError(
            "TOKEN_KEY_WRAPPING_SECRETS: production needs real secrets of at least 32 characters"
        )
    if set(wrapping) & set(config["SECRET_KEYS"]):
        raise ConfigError("TOKEN_KEY_WRAPPING_SECRETS must not repeat a secret of SECRET_KEYS")
    if config.get("STRIPE_SECRET_KEY") == LOCALSTRIPE_SECRET_KEY:
        raise ConfigError("STRIPE_SECRET_KEY: production needs a real Stripe key")
    if DEV_WEBHOOK_SECRET in config.get("STRIPE_WEBHOOK_SECRETS", []):
        raise ConfigError(
            "STRIPE_WEBHOOK_SECRETS: production needs the endpoint's real signing secret"
        )
    if str(config.get("DATABASE_URL", "")).startswith("sqlite"):
        raise ConfigError("DATABASE_URL: production needs PostgreSQL, not SQLite")


def _check_vat(config: dict[str, Any]) -> None:
    """Refuse a publisher country outside the EU, a malformed VAT id or outside-EU rate.

    Production also refuses to run without the publisher's country and VAT id: every invoice
    names the seller's VAT id, and the country decides which sales are domestic.
    """
    from decimal import Decimal, InvalidOperation

    from billing.services.vat import EU_MEMBER_STATES, InvalidVatIdError, normalise_vat_id

    production = config.get("TOLLGATE_ENV") == "production"
    country = str(
        config.get("PUBLISHER_COUNTRY", "" if production else _DEFAULTS["PUBLISHER_COUNTRY"])
    )
    if production and not country:
        raise ConfigError(
            "PUBLISHER_COUNTRY: production needs the ISO code of the EU member state "
            "the publisher is established in"
        )
    if country not in EU_MEMBER_STATES:
        raise ConfigError(
            f"PUBLISHER_COUNTRY must be an EU member state's ISO code, got {country!r}"
        )
    vat_id = str(config.get("PUBLISHER_VAT_ID") or "")
    if production and not vat_id:
        raise ConfigError(
            f"PUBLISHER_VAT_ID: production needs the publisher's VAT number (issued by {country})"
        )
    if vat_id:
        try:
            normalise_vat_id(vat_id, country=country)
        except InvalidVatIdError as exc:
            raise ConfigError(f"PUBLISHER_VAT_ID: {exc.message}") from exc
    rate = str(config.get("VAT_OUTSIDE_EU_RATE") or "0")
    try:
        valid = Decimal(0) <= Decimal(rate) <= Decimal(100)
    except InvalidOperation:
        valid = False
    if not valid:
        raise ConfigError(f"VAT_OUTSIDE_EU_RATE must be a percentage from 0 to 100, got {rate!r}")
