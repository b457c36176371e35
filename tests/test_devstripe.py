"""``python -m billing.devstripe``: localstripe with its store where we say, loaded when asked."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.stripe_server import SECRET_KEY, _free_port

FIXED_STORE = Path("/tmp/localstripe.pickle")  # noqa: S108 - localstripe's own path
REPO = Path(__file__).resolve().parent.parent


class Server:
    """A running ``billing.devstripe`` process."""

    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process = process
        self.url = url

    def call(self, method: str, path: str, fields: dict[str, str] | None = None) -> Any:
        """Send one API request; the decoded answer, or the HTTP status when it is an error."""
        body = None if fields is None else urllib.parse.urlencode(fields).encode()
        request = urllib.request.Request(  # noqa: S310 - our own server on 127.0.0.1
            f"{self.url}{path}",
            data=body,
            method=method,
            headers={"Authorization": f"Bearer {SECRET_KEY}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/js.stripe.com/v3/", timeout=1) as answer:  # noqa: S310
            return bool(answer.status == 200)
    except OSError:
        return False


def _fixed_store_state() -> tuple[bool, int]:
    try:
        return True, FIXED_STORE.stat().st_mtime_ns
    except FileNotFoundError:
        return False, 0


@pytest.fixture
def devstripe(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start ``python -m billing.devstripe`` (from a directory of its own) as a context manager."""
    started: list[subprocess.Popen[bytes]] = []

    @contextmanager
    def start(store: Path, *extra: str) -> Iterator[Server]:
        port = _free_port()
        command = [sys.executable, "-m", "billing.devstripe", "--store", str(store)]
        process = subprocess.Popen(
            [*command, "--port", str(port), *extra],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.communicate(timeout=10)[0].decode(errors="replace")
                raise AssertionError(f"devstripe did not start:\n{output}")
            time.sleep(0.05)
        try:
            yield Server(process, url)
        finally:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=20)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def test_devstripe_answers_and_writes_its_store_where_told_never_to_the_fixed_tmp_file(
    devstripe: Callable[..., Any], tmp_path: Path
) -> None:
    store = tmp_path / "state" / "stripe.pickle"
    before = _fixed_store_state()
    with devstripe(store, "--from-scratch") as server:
        customer = server.call("POST", "/v1/customers", {"email": "reader@example.org"})
        assert customer["email"] == "reader@example.org"
        # Not unpickled here: loading a localstripe store saves it to the fixed file.
        assert customer["id"].encode() in store.read_bytes()
    assert _fixed_store_state() == before
    assert not (tmp_path / "state" / "stripe.pickle.tmp").exists()


def test_devstripe_loads_the_objects_of_its_last_run_unless_told_to_start_from_scratch(
    devstripe: Callable[..., Any], tmp_path: Path
) -> None:
    store = tmp_path / "stripe.pickle"
    before = _fixed_store_state()
    with devstripe(store, "--from-scratch") as server:
        customer_id = server.call("POST", "/v1/customers", {"email": "kept@example.org"})["id"]
    with devstripe(store) as server:
        assert server.call("GET", f"/v1/customers/{customer_id}")["email"] == "kept@example.org"
    with devstripe(store, "--from-scratch") as server:
        assert server.call("GET", f"/v1/customers/{customer_id}") == 404
    assert _fixed_store_state() == before


def test_devstripe_refuses_to_start_on_a_store_it_cannot_load(tmp_path: Path) -> None:
    store = tmp_path / "stripe.pickle"
    store.write_bytes(b"not a pickle")
    finished = subprocess.run(
        [sys.executable, "-m", "billing.devstripe", "--store", str(store), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 1
    assert f"cannot load the localstripe store {store}" in finished.stderr
    assert store.read_bytes() == b"not a pickle"


def test_the_stand_in_prorates_the_share_of_the_period_left_to_the_second_rounding_half_up() -> (
    None
):
    from billing.devstripe_prorations import share_left

    start, end = 1_800_000_000, 1_800_000_000 + 365 * 86400
    assert share_left(9600, start, end, start) == 9600
    assert share_left(9600, start, end, start + 365 * 43200) == 4800
    assert share_left(9600, start, end, end) == 0
    assert share_left(9600, start, end, start - 60) == 9600, "before the period: all of it"
    assert share_left(9600, start, end, end + 60) == 0
    assert share_left(3, start, start + 2, start + 1) == 2, "1.5 rounds half up"
