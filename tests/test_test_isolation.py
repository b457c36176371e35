"""The test fixtures keep every test off the services a developer's running demo uses."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask

from billing.config import SETTINGS


def _default(name: str) -> str:
    return next(s.default for s in SETTINGS if s.name == name)


def test_a_test_app_that_did_not_ask_for_localstripe_does_not_talk_to_the_demos_localstripe(
    app: Flask,
) -> None:
    demo = urlsplit(_default("STRIPE_API_BASE"))
    used = urlsplit(app.config["STRIPE_API_BASE"])

    assert (used.hostname, used.port) != (demo.hostname, demo.port)
    assert not app.config["STRIPE_JS_URL"].startswith(_default("STRIPE_API_BASE"))
