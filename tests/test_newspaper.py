"""The demo newspaper (``examples/newspaper``): what it imports of Tollgate, the token gate in front
of its paywalled articles, the token's way from the fragment into its session, and the IP check."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask, jsonify, request
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from billing import cli, cli_tokens
from billing.clock import FixedClock
from billing.models import ApiClient
from billing.services import token_keys
from billing.services.tokens import TokenKey, TokenSigner
from tests.conftest import START

REPO = Path(__file__).resolve().parent.parent
NEWSPAPER_APP = REPO / "examples" / "newspaper" / "app.py"
CLIENT_ID = "cli_paper"
PAPER_KEY = TokenKey.parse("tk_paperNEW.Q3VycmVudFRva2VuS2V5T2ZUaGVUZXN0TmV3c3BhcGV")
OLD_PAPER_KEY = TokenKey.parse("tk_paperOLD.T2xkZXJUb2tlbktleU9mVGhlVGVzdE5ld3NwYXBlcjA")
PAID = "/articles/veldoria-coalition-talks"
FREE = "/articles/council-tests-four-day-week"


def load_newspaper() -> ModuleType:
    """The newspaper's ``app.py``, loaded by file path (it is not a package of this project)."""
    name = "newspaper_app"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, NEWSPAPER_APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class FakeTollgate:
    """Stands in for Tollgate's IP check: answers ``granted`` and counts the questions."""

    def __init__(self) -> None:
        self.granted = False
        self.asked: list[str] = []

    def __call__(self, ip: str) -> Any:
        self.asked.append(ip)
        paper = load_newspaper()
        reason = "group_ip" if self.granted else "none"
        return paper.Access(granted=self.granted, reason=reason, by_network=True)


@pytest.fixture
def paper_clock() -> FixedClock:
    """The newspaper's own clock."""
    return FixedClock(START)


@pytest.fixture
def tollgate() -> FakeTollgate:
    """The fake IP check the newspaper asks."""
    return FakeTollgate()


@pytest.fixture
def paper(paper_clock: FixedClock, tollgate: FakeTollgate) -> Flask:
    """The newspaper, trusting tokens signed with the test secret for client ``cli_paper``."""
    application = load_newspaper().create_app(
        {
            "TESTING": True,
            "TOLLGATE_URL": "https://tollgate.example",
            "TOLLGATE_CLIENT_ID": CLIENT_ID,
            "TOLLGATE_API_KEY": "tg_testtest." + "k" * 43,
            "TOLLGATE_TOKEN_KEYS": [str(PAPER_KEY)],
            "SECRET_KEY": "newspaper-test-secret",
            "CLOCK": paper_clock,
        }
    )
    application.extensions["paywall"]._ask_about = tollgate
    return application


@pytest.fixture
def reader_browser(paper: Flask) -> FlaskClient:
    """A browser on the newspaper."""
    return paper.test_client()


def issue(
    *,
    reason: str = "trial",
    client_id: str = CLIENT_ID,
    now: datetime = START,
    key: TokenKey = PAPER_KEY,
    until: datetime | None = START + timedelta(days=14),
) -> str:
    """A token as Tollgate's ``/access`` issues it."""
    token, _ = TokenSigner([key], client_id=client_id).issue(
        reader_id="rdr_someone", reason=reason, plan=None, group_id=None, until=until, now=now
    )
    return token


def hand_over(browser: FlaskClient, token: str) -> Any:
    """What ``static/token.js`` does with the fragment: POST the token to ``/session``."""
    return browser.post("/session", json={"token": token})


def reads(browser: FlaskClient, path: str = PAID) -> bool:
    """Whether the article body is shown (rather than the paywall)."""
    page = browser.get(path)
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert ("data-article-body" in body) != ("data-paywall" in body)
    return "data-article-body" in body


# What it imports --------------------------------------------------------------------------------


def test_the_newspaper_imports_nothing_of_tollgate_but_the_token_module() -> None:
    script = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("newspaper_app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["newspaper_app"] = module
spec.loader.exec_module(module)
browser = module.app.test_client()
statuses = [browser.get(path).status_code for path in ("/", sys.argv[2], sys.argv[3])]
statuses.append(browser.post("/session", json={"token": "x.y.z"}).status_code)
print(json.dumps({
    "statuses": statuses,
    "tollgate": sorted(m for m in sys.modules if m.split(".")[0] in ("billing", "webhooks", "app")),
    "tokens": sys.modules["tollgate_tokens"].__file__,
}))
"""
    # Run from the repository root, where ``import billing`` would work: nothing may do it.
    env = {**os.environ, "TOLLGATE_URL": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(NEWSPAPER_APP), PAID, FREE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [200, 200, 200, 400]
    assert report["tollgate"] == []
    assert Path(report["tokens"]) == REPO / "billing" / "services" / "tokens.py"


def test_the_newspapers_defaults_are_the_demo_client_that_seed_demo_creates() -> None:
    paper = load_newspaper()
    defaults = paper.settings_from_env({})
    assert defaults["TOLLGATE_URL"] == "http://127.0.0.1:5000"
    assert defaults["TOLLGATE_CLIENT_ID"] == cli.DEMO_NEWSPAPER_CLIENT_ID
    assert defaults["TOLLGATE_API_KEY"] == cli.DEMO_NEWSPAPER_KEY
    assert defaults["TOLLGATE_TOKEN_KEYS"] == [cli_tokens.DEMO_NEWSPAPER_TOKEN_KEY]
    assert defaults["SESSION_COOKIE_NAME"] != "session"  # Tollgate's cookie, on the same host


def test_the_newspaper_reads_its_settings_from_the_environment() -> None:
    settings = load_newspaper().settings_from_env(
        {
            "TOLLGATE_URL": "https://tollgate.example/",
            "TOLLGATE_CLIENT_ID": "cli_x",
            "TOLLGATE_API_KEY": "tg_key",
            "TOLLGATE_TOKEN_KEYS": f"{PAPER_KEY}, {OLD_PAPER_KEY}",
            "NEWSPAPER_SECRET": "paper",
        }
    )
    assert settings["TOLLGATE_URL"] == "https://tollgate.example"
    assert settings["TOLLGATE_CLIENT_ID"] == "cli_x"
    assert settings["TOLLGATE_API_KEY"] == "tg_key"
    assert settings["TOLLGATE_TOKEN_KEYS"] == [str(PAPER_KEY), str(OLD_PAPER_KEY)]
    assert settings["SECRET_KEY"] == "paper"


def test_seed_demo_creates_the_newspapers_client_once_with_its_known_key(
    runner: FlaskCliRunner, session: Session, client: FlaskClient
) -> None:
    for _ in range(2):
        result = runner.invoke(args=["billing", "seed-demo"])
        assert result.exit_code == 0, result.output
        assert cli.DEMO_NEWSPAPER_CLIENT_ID in result.output
        assert cli.DEMO_NEWSPAPER_KEY in result.output
    clients = session.scalars(select(ApiClient)).all()
    assert [(c.public_id, c.allowed_origins) for c in clients] == [
        (cli.DEMO_NEWSPAPER_CLIENT_ID, ["http://127.0.0.1:5001"])
    ]
    response = client.get(
        "/api/v1/entitlement?ip=192.0.2.1",
        headers={"Authorization": f"Bearer {cli.DEMO_NEWSPAPER_KEY}"},
    )
    assert response.status_code == 200
    assert response.get_json()["granted"] is False
    assert cli_tokens.DEMO_NEWSPAPER_TOKEN_KEY in result.output
    signer = token_keys.signer_for(
        session,
        clients[0],
        wrapper=token_keys.current_wrapper(),
        now=START,
        ttl=timedelta(minutes=15),
    )
    token, _ = signer.issue(
        reader_id="rdr_x", reason="trial", plan=None, group_id=None, until=None, now=START
    )
    newspaper_side = TokenSigner(
        load_newspaper().settings_from_env({})["TOLLGATE_TOKEN_KEYS"],
        client_id=cli.DEMO_NEWSPAPER_CLIENT_ID,
    )
    assert newspaper_side.verify(token, now=START).reader_id == "rdr_x"


def test_seed_demo_creates_no_client_with_a_public_key_in_production(
    app: Flask, runner: FlaskCliRunner, session: Session
) -> None:
    app.config["DEV_MODE"] = False
    result = runner.invoke(args=["billing", "seed-demo"])
    assert result.exit_code == 0, result.output
    assert cli.DEMO_NEWSPAPER_KEY not in result.output
    assert cli_tokens.DEMO_NEWSPAPER_TOKEN_KEY not in result.output
    assert session.scalars(select(ApiClient)).all() == []


# Pages --------------------------------------------------------------------------------------------


def test_the_front_page_lists_free_and_paywalled_articles(reader_browser: FlaskClient) -> None:
    page = reader_browser.get("/").get_data(as_text=True)
    assert page.count('class="tag free"') >= 2
    assert page.count('class="tag paid"') >= 3
    assert f'href="{PAID}"' in page
    assert "fiction" in page


def test_a_free_article_needs_no_token_and_asks_tollgate_nothing(
    reader_browser: FlaskClient, tollgate: FakeTollgate
) -> None:
    assert reads(reader_browser, FREE)
    assert tollgate.asked == []


def test_a_paywalled_article_without_a_token_shows_the_paywall_linking_to_tollgate(
    reader_browser: FlaskClient,
) -> None:
    page = reader_browser.get(PAID).get_data(as_text=True)
    assert "data-article-body" not in page
    assert "Get instant access to all articles and 20 years of archives." in page
    assert "14-day free trial." in page
    for label in ("Log in", "Start your free trial", "Subscribe", "Access through my organisation"):
        assert f">{label}</a>" in page
    links = [
        href.replace("&amp;", "&")
        for href in re.findall(r'class="button[^"]*" href="([^"]+)"', page)
    ]
    assert len(links) == 4
    offers = []
    for link in links:
        parts = urlsplit(link)
        assert (parts.scheme, parts.netloc, parts.path) == ("https", "tollgate.example", "/access")
        query = parse_qs(parts.query)
        offers.append(query.pop("offer", None))
        assert query == {"client": [CLIENT_ID], "return_to": [f"http://localhost{PAID}"]}
    # "Start your free trial" asks Tollgate to go straight to the trial; the others show offers.
    assert offers == [None, ["trial"], None, None]


# The token gate ---------------------------------------------------------------------------------


def test_a_granted_token_handed_over_opens_the_article(reader_browser: FlaskClient) -> None:
    response = hand_over(reader_browser, issue())
    assert response.status_code == 200
    assert response.get_json() == {"stored": True, "reason": "trial"}
    page = reader_browser.get(PAID).get_data(as_text=True)
    assert "data-article-body" in page
    assert 'data-access="trial"' in page
    assert "until 9 December 2026" in page


@pytest.mark.parametrize(
    ("token", "error"),
    [
        pytest.param(lambda: issue(client_id="cli_other"), "invalid", id="another-sites-token"),
        pytest.param(lambda: issue(key=TokenKey.generate()), "invalid", id="other-key"),
        pytest.param(
            lambda: issue(key=TokenKey(PAPER_KEY.kid, OLD_PAPER_KEY.secret)),
            "invalid",
            id="our-kid-another-secret",
        ),
        pytest.param(lambda: issue()[:-2] + "AA", "invalid", id="tampered"),
        pytest.param(lambda: "not-a-token", "invalid", id="garbage"),
        pytest.param(lambda: issue(now=START - timedelta(minutes=16)), "expired", id="expired"),
    ],
)
def test_a_token_that_does_not_verify_is_refused_and_keeps_the_paywall(
    reader_browser: FlaskClient, token: Callable[[], str], error: str
) -> None:
    response = hand_over(reader_browser, token())
    assert response.status_code == 400
    assert response.get_json()["error"] == error
    assert not reads(reader_browser)


def test_a_token_of_a_rotated_older_key_the_site_still_lists_opens_the_article(
    reader_browser: FlaskClient, paper: Flask
) -> None:
    paper.extensions["paywall"] = load_newspaper().Paywall(
        {**paper.config, "TOLLGATE_TOKEN_KEYS": [str(PAPER_KEY), str(OLD_PAPER_KEY)]}
    )
    assert hand_over(reader_browser, issue(key=OLD_PAPER_KEY)).status_code == 200
    assert reads(reader_browser)


def test_a_token_posted_from_another_site_or_not_as_json_is_refused(
    reader_browser: FlaskClient,
) -> None:
    other_site = reader_browser.post(
        "/session", json={"token": issue()}, headers={"Origin": "https://evil.example"}
    )
    assert other_site.status_code == 403
    as_form = reader_browser.post("/session", data={"token": issue()})
    assert as_form.status_code == 400
    assert not reads(reader_browser)
    same_site = reader_browser.post(
        "/session", json={"token": issue()}, headers={"Origin": "http://localhost"}
    )
    assert same_site.status_code == 200


def test_an_expired_grant_goes_through_tollgate_once_without_a_page(
    reader_browser: FlaskClient, paper_clock: FixedClock
) -> None:
    hand_over(reader_browser, issue())
    assert reads(reader_browser)
    paper_clock.advance(minutes=15)

    response = reader_browser.get(PAID)
    assert response.status_code == 302
    renew = urlsplit(response.headers["Location"])
    assert (renew.netloc, renew.path) == ("tollgate.example", "/access")
    assert parse_qs(renew.query) == {
        "client": [CLIENT_ID],
        "return_to": [f"http://localhost{PAID}"],
        "prompt": ["none"],
    }
    # Tollgate did not send a token back (say): no loop, the paywall.
    assert not reads(reader_browser)

    # A fresh token from Tollgate resets the guard.
    hand_over(
        reader_browser, issue(now=paper_clock.now(), until=paper_clock.now() + timedelta(days=1))
    )
    assert reads(reader_browser)
    paper_clock.advance(minutes=15)
    assert reader_browser.get(PAID).status_code == 302


def test_the_fragment_script_moves_the_token_into_the_session_and_reloads(
    reader_browser: FlaskClient,
) -> None:
    page = reader_browser.get(PAID).get_data(as_text=True)
    assert '<script src="/static/token.js"></script>' in page
    with reader_browser.get("/static/token.js") as response:
        script = response.get_data(as_text=True)
    assert "tollgate_token=" in script
    assert "tollgate_error=" in script
    assert 'fetch("/session"' in script
    assert "history.replaceState" in script
    assert "location.reload()" in script


# Access by an organisation's network --------------------------------------------------------


def test_a_visitor_on_an_organisations_network_reads_without_a_token(
    reader_browser: FlaskClient, tollgate: FakeTollgate
) -> None:
    tollgate.granted = True
    page = reader_browser.get(PAID).get_data(as_text=True)
    assert "data-article-body" in page
    assert "organisation's network" in page
    assert tollgate.asked == ["127.0.0.1"]


def test_the_answer_about_an_address_is_kept_for_a_minute(
    reader_browser: FlaskClient, tollgate: FakeTollgate, paper_clock: FixedClock
) -> None:
    for _ in range(3):
        assert not reads(reader_browser)
    assert tollgate.asked == ["127.0.0.1"]
    paper_clock.advance(seconds=61)
    tollgate.granted = True
    assert reads(reader_browser)
    assert tollgate.asked == ["127.0.0.1", "127.0.0.1"]


def test_a_reader_with_a_granting_token_costs_tollgate_no_call(
    reader_browser: FlaskClient, tollgate: FakeTollgate
) -> None:
    hand_over(reader_browser, issue())
    for _ in range(3):
        assert reads(reader_browser)
    assert tollgate.asked == []


@pytest.fixture
def api_stub() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in for Tollgate's ``GET /api/v1/entitlement`` on a local port; records the calls."""
    calls: list[dict[str, Any]] = []
    stub = Flask("tollgate_stub")

    @stub.get("/api/v1/entitlement")
    def entitlement() -> Any:
        calls.append({"ip": request.args.get("ip"), "auth": request.headers.get("Authorization")})
        return jsonify(granted=True, reason="group_ip", until=None, reader_id=None)

    server = make_server("127.0.0.1", 0, stub, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", calls
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def test_the_ip_check_calls_tollgates_api_with_the_key(
    paper_clock: FixedClock, api_stub: tuple[str, list[dict[str, Any]]]
) -> None:
    url, calls = api_stub
    paywall = load_newspaper().Paywall(
        {
            "TOLLGATE_URL": url,
            "TOLLGATE_CLIENT_ID": CLIENT_ID,
            "TOLLGATE_API_KEY": "tg_testtest.key",
            "TOLLGATE_TOKEN_KEYS": [str(PAPER_KEY)],
            "IP_CHECK_TTL": 60,
            "IP_CHECK_FAILURE_TTL": 10,
        }
    )
    access = paywall.network_access("198.51.100.7", paper_clock.now())
    assert (access.granted, access.reason, access.by_network) == (True, "group_ip", True)
    assert calls == [{"ip": "198.51.100.7", "auth": "Bearer tg_testtest.key"}]


def test_an_unreachable_tollgate_means_the_paywall_not_an_error(
    paper_clock: FixedClock,
) -> None:
    paywall = load_newspaper().Paywall(
        {
            "TOLLGATE_URL": "http://127.0.0.1:9",
            "TOLLGATE_CLIENT_ID": CLIENT_ID,
            "TOLLGATE_API_KEY": "tg_testtest.key",
            "TOLLGATE_TOKEN_KEYS": [str(PAPER_KEY)],
            "IP_CHECK_TTL": 60,
            "IP_CHECK_FAILURE_TTL": 10,
        }
    )
    assert paywall.network_access("198.51.100.7", paper_clock.now()).granted is False
