"""The country of an IP address, from a MaxMind GeoLite2/GeoIP2 Country database, when configured.

``GEOIP_DATABASE`` names the ``.mmdb`` file; empty (the default) turns the feature off and
:func:`lookup` gives None. The database is opened once at startup (:func:`init_app`), so a missing
or unreadable file stops the app with a :class:`~billing.config.ConfigError` naming the setting,
never a failing request later. ``maxminddb`` is imported only then: a publisher without GeoIP
needs no such package (``pip install tollgate[geoip]`` brings it).

The IP country is the third, supporting piece of evidence of where a reader lives
(:mod:`billing.services.taxes`): it is recorded, never decisive.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from billing.config import ConfigError

if TYPE_CHECKING:
    from flask import Flask

EXTENSION_KEY = "tollgate_geoip"


class CountryLookup(Protocol):
    """Anything that says in which country an IP address is."""

    def country_of(self, ip: str | None) -> str | None:
        """The ISO 3166-1 alpha-2 code of ``ip``'s country; None when unknown."""
        ...


class GeoIpDatabase:
    """A MaxMind Country database opened read-only (safe to share between threads and forks)."""

    def __init__(self, reader: Any, path: Path) -> None:
        self._reader = reader
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> GeoIpDatabase:
        """Open the ``.mmdb`` at ``path``; :class:`ConfigError` naming ``GEOIP_DATABASE`` when
        the file is missing, unreadable or not a MaxMind database, or ``maxminddb`` is absent."""
        where = Path(path)
        try:
            import maxminddb
        except ImportError as exc:
            raise ConfigError(
                "GEOIP_DATABASE is set but the maxminddb package is not installed "
                "(pip install 'tollgate[geoip]')"
            ) from exc
        try:
            reader = maxminddb.open_database(str(where))
        except (OSError, ValueError, RuntimeError) as exc:
            # RuntimeError: maxminddb's InvalidDatabaseError for a file that is not a database.
            raise ConfigError(
                f"GEOIP_DATABASE: cannot read a MaxMind database at {str(where)!r} ({exc})"
            ) from exc
        return cls(reader, where)

    def country_of(self, ip: str | None) -> str | None:
        """The country ISO code the database gives for ``ip`` (its ``country.iso_code``); None for
        no address, a malformed one, or one the database does not cover."""
        if not ip:
            return None
        try:
            address = ipaddress.ip_address(ip.strip())
        except ValueError:
            return None
        try:
            record = self._reader.get(address)
        except (ValueError, TypeError, RuntimeError):
            # An IPv6 address asked of an IPv4-only database, or a corrupt record.
            return None
        if not isinstance(record, dict):
            return None
        country = record.get("country")
        code = country.get("iso_code") if isinstance(country, dict) else None
        if not isinstance(code, str) or len(code) != 2 or not code.isascii() or not code.isalpha():
            return None
        return code.upper()

    def close(self) -> None:
        """Release the database file."""
        self._reader.close()


def init_app(app: Flask) -> None:
    """Open ``GEOIP_DATABASE`` when set (raising :class:`ConfigError` if it cannot be read)."""
    path = str(app.config.get("GEOIP_DATABASE") or "").strip()
    app.extensions[EXTENSION_KEY] = GeoIpDatabase.open(path) if path else None


def lookup() -> CountryLookup | None:
    """The running app's GeoIP database; None when ``GEOIP_DATABASE`` is not set."""
    from flask import current_app

    found: CountryLookup | None = current_app.extensions.get(EXTENSION_KEY)
    return found
