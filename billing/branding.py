"""The publication's brand: its name, logo, accent colour, home page and legal links.

Tollgate runs under the publisher's name, not its own. The settings (``PUBLICATION_*``,
``SUPPORT_EMAIL``, ``TERMS_URL``, ``PRIVACY_URL``, ``IMPRINT_URL``) are checked once at start
(:func:`brand_from` raises :class:`~billing.config.ConfigError` naming the setting) and offered to
every template, pages and mails alike, as ``brand``. The accent colour reaches the pages through
``/brand.css`` (the CSP allows no inline styles); a logo given as a file is served at
``/brand/logo``; ``/favicon.svg`` (and ``/favicon.ico``) is the publication's initial on its accent.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, abort, current_app
from markupsafe import escape

from billing.config import ConfigError

ACCENT = re.compile(r"#(?:[0-9a-fA-F]{3}){1,2}")
LOGO_TYPES = {
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
}
LOGO_MAX_BYTES = 512 * 1024
BRAND_CACHE_SECONDS = 3600

bp = Blueprint("brand", __name__)


@dataclass(frozen=True)
class Brand:
    """The publication as readers know it; empty strings are settings left unset."""

    name: str
    home_url: str
    logo_url: str
    logo_file: Path | None
    accent: str
    support_email: str
    terms_url: str
    privacy_url: str
    imprint_url: str

    @property
    def initial(self) -> str:
        """The first letter of the name, for the favicon."""
        return (self.name.strip()[:1] or "T").upper()

    @property
    def legal_links(self) -> list[tuple[str, str]]:
        """The footer's legal links that are set, as ``(label, url)``."""
        links = [
            ("Terms", self.terms_url),
            ("Privacy", self.privacy_url),
            ("Imprint", self.imprint_url),
        ]
        return [(label, url) for label, url in links if url]

    @property
    def logo_origin(self) -> str | None:
        """The origin a logo given by URL is loaded from (for the CSP), or None."""
        if not self.logo_url.startswith(("http://", "https://")):
            return None
        parts = urlsplit(self.logo_url)
        return f"{parts.scheme}://{parts.netloc}"


def _url(config: dict[str, Any], name: str) -> str:
    value = str(config.get(name) or "").strip()
    if value and urlsplit(value).scheme not in {"http", "https"}:
        raise ConfigError(f"{name} must be an http(s) URL, got {value!r}")
    return value


def brand_from(config: dict[str, Any]) -> Brand:
    """The brand the settings describe; ConfigError naming the setting that is wrong."""
    accent = str(config.get("PUBLICATION_ACCENT") or "#0b5fff").strip()
    if not ACCENT.fullmatch(accent):
        raise ConfigError(f"PUBLICATION_ACCENT must be a colour like #8a1c1c, got {accent!r}")
    support = str(config.get("SUPPORT_EMAIL") or "").strip()
    if support and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", support):
        raise ConfigError(f"SUPPORT_EMAIL must be an e-mail address, got {support!r}")
    logo = str(config.get("PUBLICATION_LOGO") or "").strip()
    logo_url, logo_file = "", None
    if logo.startswith(("http://", "https://")):
        logo_url = _url(config, "PUBLICATION_LOGO")
    elif logo:
        path = Path(logo)
        if path.suffix.lower() not in LOGO_TYPES or not path.is_file():
            raise ConfigError(
                f"PUBLICATION_LOGO must be an http(s) URL or an existing .svg, .png or .jpg file, "
                f"got {logo!r}"
            )
        if path.stat().st_size > LOGO_MAX_BYTES:
            raise ConfigError(f"PUBLICATION_LOGO: the file is larger than {LOGO_MAX_BYTES} bytes")
        logo_file = path.resolve()
        logo_url = "/brand/logo"
    return Brand(
        name=str(config.get("PUBLICATION_NAME") or "Tollgate").strip(),
        home_url=_url(config, "PUBLICATION_URL"),
        logo_url=logo_url,
        logo_file=logo_file,
        accent=accent,
        support_email=support,
        terms_url=_url(config, "TERMS_URL"),
        privacy_url=_url(config, "PRIVACY_URL"),
        imprint_url=_url(config, "IMPRINT_URL"),
    )


def current_brand() -> Brand:
    """The running app's brand."""
    brand: Brand = current_app.extensions["brand"]
    return brand


def init_app(app: Flask) -> None:
    """Check the brand settings, offer ``brand`` to every template and serve its assets."""
    brand = brand_from(app.config)
    app.extensions["brand"] = brand

    @app.context_processor
    def _brand() -> dict[str, Any]:
        return {"brand": brand}

    app.register_blueprint(bp)


def _cached(response: Response) -> Response:
    response.headers["Cache-Control"] = f"public, max-age={BRAND_CACHE_SECONDS}"
    return response


@bp.get("/brand.css")
def stylesheet() -> Response:
    """The accent colour as CSS custom properties, loaded after ``tollgate.css``."""
    accent = current_brand().accent
    css = f":root {{ --accent: {accent}; --brand: {accent}; }}\n"
    return _cached(Response(css, content_type="text/css; charset=utf-8"))


@bp.get("/brand/logo")
def logo() -> Response:
    """The logo file named by ``PUBLICATION_LOGO`` (404 when the logo is a URL or unset)."""
    path = current_brand().logo_file
    if path is None:
        abort(404)
    kind = LOGO_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
    return _cached(Response(path.read_bytes(), content_type=kind))


@bp.get("/favicon.ico", endpoint="favicon_ico")
@bp.get("/favicon.svg")
def favicon() -> Response:
    """The publication's initial, white on its accent colour, as an SVG icon."""
    brand = current_brand()
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">'
        f'<rect width="64" height="64" rx="12" fill="{brand.accent}"/>'
        '<text x="32" y="45" font-family="Georgia, serif" font-size="40" font-weight="700" '
        f'text-anchor="middle" fill="#fff">{escape(brand.initial)}</text></svg>'
    )
    return _cached(Response(svg, content_type="image/svg+xml"))
