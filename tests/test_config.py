"""Settings come from the environment, production refuses development secrets, the README tells all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from billing import create_app
from billing.config import SETTINGS, ConfigError, check, from_env

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {
    "TOLLGATE_ENV": "production",
    "SECRET_KEYS": "a" * 40,
    "TOKEN_KEY_WRAPPING_SECRETS": "w" * 40,
    "DATABASE_URL": "postgresql://db.internal/tollgate",
    "STRIPE_SECRET_KEY": "sk_live_real",
    "STRIPE_WEBHOOK_SECRETS": "whsec_real",
    "PUBLISHER_COUNTRY": "BE",
    "PUBLISHER_VAT_ID": "BE0411905847",
}


def test_nothing_needs_configuring_in_development() -> None:
    config = from_env({})
    check(config)
    assert config["DATABASE_URL"].startswith("sqlite:///")
    assert config["TRIAL_DAYS"] == 14


def test_settings_are_read_from_the_environment() -> None:
    config = from_env({"TRIAL_DAYS": "21", "SECRET_KEYS": "new, old", "PAST_DUE_GRACE_DAYS": "3"})
    assert (config["TRIAL_DAYS"], config["PAST_DUE_GRACE_DAYS"]) == (21, 3)
    assert config["SECRET_KEYS"] == ["new", "old"]
    assert config["SECRET_KEY"] == "new"


def test_a_setting_that_is_not_a_number_is_named_in_the_error() -> None:
    with pytest.raises(ConfigError, match="TRIAL_DAYS"):
        from_env({"TRIAL_DAYS": "two weeks"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SECRET_KEYS", "dev-secret-change-me"),
        ("SECRET_KEYS", "short"),
        ("TOKEN_KEY_WRAPPING_SECRETS", "dev-token-key-wrapping-change-me"),
        ("TOKEN_KEY_WRAPPING_SECRETS", "short"),
        ("TOKEN_KEY_WRAPPING_SECRETS", "a" * 40),
        ("STRIPE_SECRET_KEY", "sk_test_localstripe"),
        ("STRIPE_WEBHOOK_SECRETS", "whsec_dev_tollgate"),
        ("DATABASE_URL", "sqlite:////tmp/prod.sqlite3"),
        ("PUBLISHER_COUNTRY", "CH"),
        ("PUBLISHER_VAT_ID", "BE0411905848"),
        ("PUBLISHER_VAT_ID", "DE136695976"),
    ],
)
def test_production_refuses_development_values(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        create_app(from_env({**PRODUCTION, name: value}))


@pytest.mark.parametrize("name", ["PUBLISHER_COUNTRY", "PUBLISHER_VAT_ID"])
def test_production_refuses_to_start_without_the_publishers_country_or_vat_id(name: str) -> None:
    environ = {key: value for key, value in PRODUCTION.items() if key != name}
    with pytest.raises(ConfigError, match=f"{name}: production needs"):
        create_app(from_env(environ))


def test_development_still_defaults_the_publishers_country_and_needs_no_vat_id() -> None:
    config = from_env({})
    check(config)
    assert (config["PUBLISHER_COUNTRY"], config["PUBLISHER_VAT_ID"]) == ("BE", "")


def test_token_keys_cannot_be_left_without_a_wrapping_secret() -> None:
    with pytest.raises(ConfigError, match="TOKEN_KEY_WRAPPING_SECRETS"):
        check(from_env({"TOKEN_KEY_WRAPPING_SECRETS": " , "}))


def test_production_with_real_secrets_is_accepted() -> None:
    config = from_env(PRODUCTION)
    check(config)
    assert config["SESSION_COOKIE_SECURE"] is True


def test_the_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in readme]
    assert missing == []


def test_the_readme_opens_with_the_two_commands_the_makefile_has() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    first_commands = re.findall(r"^make (\w+)", readme, re.M)[:2]
    assert first_commands == ["run", "test"]
    for target in first_commands:
        assert re.search(rf"^{target}:", makefile, re.M)
