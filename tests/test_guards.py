"""Where a reader may be sent after logging in, signing up or subscribing: only our own pages."""

from __future__ import annotations

import pytest

from billing.views.guards import safe_next


@pytest.mark.parametrize(
    "target",
    [
        "/account",
        "/trial?next=%2Faccount",
        "/access?client=cli_x&return_to=https://news.example/article",
        "/access?client=cli_x&return_to=https%3A%2F%2Fnews.example%2F",
    ],
)
def test_local_paths_are_kept(target: str) -> None:
    assert safe_next(target, "/default") == target


@pytest.mark.parametrize(
    "target",
    [
        None,
        "",
        "account",
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example/",
        "/\\/evil.example/",
        "/account\\..\\",
        "/\t/evil.example/",
        "/account\r\nSet-Cookie: x=1",
        "javascript:alert(1)",
        "http:/evil.example",
    ],
)
def test_anything_that_could_leave_the_site_becomes_the_default(target: str | None) -> None:
    assert safe_next(target, "/default") == "/default"
