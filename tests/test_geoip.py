"""With a GeoIP database configured, the reader's IP country is recorded as a third, supporting
piece of VAT evidence: beside the declared and card country, never blocking a sale."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from mmdb_writer import MMDBWriter
from netaddr import IPSet
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import create_app, geoip
from billing.clock import FixedClock
from billing.config import ConfigError, from_env
from billing.geoip import GeoIpDatabase
from billing.models import Customer, Invoice, Plan, Reader
from billing.services import reports
from billing.services.reports.base import Filters
from tests import factories
from tests.conftest import post_form
from tests.helpers import login
from tests.payments_support import GERMAN_CARD
from tests.stripe_server import LocalstripeServer

pytestmark = pytest.mark.wall_clock

MONTHLY = "individual-monthly"
GERMAN_IP = "192.0.2.7"
FRENCH_IP = "198.51.100.7"
UNKNOWN_IP = "203.0.113.9"


def build_database(path: Path) -> Path:
    """A tiny real GeoLite2-Country database: 192.0.2.0/24 in Germany, 198.51.100.0/24 and
    2001:db8::/32 in France, nothing else."""
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    writer.insert_network(IPSet(["192.0.2.0/24"]), {"country": {"iso_code": "DE"}})
    writer.insert_network(
        IPSet(["198.51.100.0/24", "2001:db8::/32"]), {"country": {"iso_code": "FR"}}
    )
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="module")
def geoip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test database's file."""
    return build_database(tmp_path_factory.mktemp("geoip") / "countries.mmdb")


# --- the database ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "country"),
    [
        (GERMAN_IP, "DE"),
        (FRENCH_IP, "FR"),
        ("2001:db8::42", "FR"),
        (UNKNOWN_IP, None),
        ("::1", None),
        ("not an address", None),
        ("", None),
        (None, None),
    ],
)
def test_the_database_places_the_addresses_it_covers_and_no_others(
    geoip_path: Path, ip: str | None, country: str | None
) -> None:
    database = GeoIpDatabase.open(geoip_path)

    assert database.country_of(ip) == country
    database.close()


def test_a_missing_database_file_stops_the_app_at_startup_naming_the_setting(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="GEOIP_DATABASE: cannot read"):
        create_app(from_env({"GEOIP_DATABASE": str(tmp_path / "missing.mmdb")}))


def test_a_file_that_is_no_maxmind_database_stops_the_app_at_startup_naming_the_setting(
    tmp_path: Path,
) -> None:
    garbage = tmp_path / "countries.mmdb"
    garbage.write_bytes(b"this is not a MaxMind database\n" * 10)

    with pytest.raises(ConfigError, match="GEOIP_DATABASE: cannot read"):
        create_app(from_env({"GEOIP_DATABASE": str(garbage)}))


def test_without_the_setting_geoip_is_off() -> None:
    bare = Flask(__name__)
    bare.config.update(from_env({}))

    geoip.init_app(bare)

    assert bare.config["GEOIP_DATABASE"] == ""
    with bare.app_context():
        assert geoip.lookup() is None


# --- evidence on subscribe ---------------------------------------------------------------------


@pytest.fixture
def trusted_proxies() -> int:
    """How many proxies in front of the app are believed (none unless a test says)."""
    return 0


@pytest.fixture
def app_config(
    app_config: dict[str, Any], stripe: LocalstripeServer, geoip_path: Path, trusted_proxies: int
) -> dict[str, Any]:
    """A publisher in Belgium with the test GeoIP database."""
    app_config["PUBLISHER_COUNTRY"] = "BE"
    app_config["GEOIP_DATABASE"] = str(geoip_path)
    app_config["PROXY_FIX_X_FOR"] = trusted_proxies
    return app_config


@pytest.fixture
def reader(app: Flask, session: Session, clock: FixedClock) -> Reader:
    """A verified reader in Germany, without a trial."""
    created = factories.reader(
        email="greta@example.org", country="DE", created_at=clock.now() - timedelta(days=40)
    )
    session.commit()
    return created


@pytest.fixture
def client(app: Flask, reader: Reader, plans: dict[str, Plan]) -> FlaskClient:
    """A browser in which ``reader`` is logged in."""
    browser = app.test_client()
    login(browser, reader)
    return browser


def browse_from(client: FlaskClient, reader: Reader, ip: str) -> None:
    """The reader's browser is now at the address ``ip``, logged in there (the session is tied to
    the address)."""
    client.environ_base["REMOTE_ADDR"] = ip
    login(client, reader)


def subscribe_from(client: FlaskClient, stripe: LocalstripeServer, reader: Reader, ip: str) -> Any:
    """The reader in Germany subscribes monthly with a German card from the address ``ip``."""
    browse_from(client, reader, ip)
    method = stripe.create_card(GERMAN_CARD)
    return post_form(
        client, "/subscribe", {"plan": MONTHLY, "country": "DE", "payment_method": method}
    )


def evidence_text(session: Session, clock: FixedClock) -> str:
    """The invoice's evidence as the invoices report writes it."""
    day = clock.now().date()
    table = reports.get("invoices").build(
        session,
        Filters(start=day - timedelta(days=1), end=day + timedelta(days=1)),
        clock.now(),
        None,
    )
    return str(table.rows[0][17])


def test_an_ip_in_the_readers_country_is_recorded_on_the_customer_and_the_invoice(
    client: FlaskClient,
    stripe: LocalstripeServer,
    session: Session,
    clock: FixedClock,
    reader: Reader,
) -> None:
    answer = subscribe_from(client, stripe, reader, GERMAN_IP)

    assert answer.status_code == 302
    assert "/subscribe/done" in answer.headers["Location"]
    assert session.scalars(select(Customer)).one().ip_country == "DE"
    invoice = session.scalars(select(Invoice)).one()
    assert invoice.tax_evidence == {
        "declared_country": "DE",
        "card_country": "DE",
        "agrees": True,
        "confirmed_by_reader": False,
        "ip_country": "DE",
    }
    assert evidence_text(session, clock) == "declared DE, card DE, IP DE"


def test_an_ip_that_contradicts_the_other_two_is_recorded_and_does_not_stop_the_sale(
    client: FlaskClient,
    stripe: LocalstripeServer,
    session: Session,
    clock: FixedClock,
    reader: Reader,
) -> None:
    answer = subscribe_from(client, stripe, reader, FRENCH_IP)

    assert answer.status_code == 302, "no confirmation asked: the IP only supports"
    assert "/subscribe/done" in answer.headers["Location"]
    invoice = session.scalars(select(Invoice)).one()
    assert (invoice.tax_country, invoice.tax) == ("DE", 79), "taxed where the reader lives"
    assert invoice.tax_evidence is not None
    assert invoice.tax_evidence["ip_country"] == "FR"
    assert invoice.tax_evidence["agrees"] is True
    assert evidence_text(session, clock) == "declared DE, card DE, IP FR"


def test_an_ip_the_database_does_not_cover_records_no_ip_evidence(
    client: FlaskClient,
    stripe: LocalstripeServer,
    session: Session,
    clock: FixedClock,
    reader: Reader,
) -> None:
    answer = subscribe_from(client, stripe, reader, UNKNOWN_IP)

    assert answer.status_code == 302
    assert session.scalars(select(Customer)).one().ip_country is None
    invoice = session.scalars(select(Invoice)).one()
    assert invoice.tax_evidence is not None
    assert "ip_country" not in invoice.tax_evidence
    assert evidence_text(session, clock) == "declared DE, card DE"


@pytest.mark.parametrize("trusted_proxies", [1])
def test_behind_a_trusted_proxy_the_forwarded_address_is_the_one_placed(
    client: FlaskClient, stripe: LocalstripeServer, session: Session, reader: Reader
) -> None:
    browse_from(client, reader, FRENCH_IP)
    client.environ_base["REMOTE_ADDR"] = "10.0.0.1"  # the proxy's; the reader's is forwarded
    client.environ_base["HTTP_X_FORWARDED_FOR"] = FRENCH_IP
    method = stripe.create_card(GERMAN_CARD)

    answer = post_form(
        client, "/subscribe", {"plan": MONTHLY, "country": "DE", "payment_method": method}
    )

    assert answer.status_code == 302
    assert "/subscribe/done" in answer.headers["Location"]
    assert session.scalars(select(Customer)).one().ip_country == "FR"


def test_a_card_saved_on_the_account_page_records_the_ip_country_beside_the_cards(
    client: FlaskClient, stripe: LocalstripeServer, session: Session, reader: Reader
) -> None:
    subscribe_from(client, stripe, reader, GERMAN_IP)
    browse_from(client, reader, FRENCH_IP)
    method = stripe.create_card(GERMAN_CARD)

    saved = post_form(client, "/account/card", {"payment_method": method})

    assert saved.status_code == 302
    session.expire_all()
    customer = session.scalars(select(Customer)).one()
    assert (customer.card_country, customer.ip_country) == ("DE", "FR")


def test_a_country_change_records_the_ip_country_it_was_asked_from(
    client: FlaskClient, stripe: LocalstripeServer, session: Session, reader: Reader
) -> None:
    subscribe_from(client, stripe, reader, GERMAN_IP)
    browse_from(client, reader, FRENCH_IP)

    done = post_form(client, "/account/country", {"country": "FR", "confirm": "y"})

    assert done.status_code == 302
    session.expire_all()
    customer = session.scalars(select(Customer)).one()
    assert (customer.declared_country, customer.card_country, customer.ip_country) == (
        "FR",
        "DE",
        "FR",
    )
