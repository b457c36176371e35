"""The development launcher behind ``make run``: everything Tollgate needs, on this machine.

Run it from the repository root as ``.venv/bin/python scripts/dev.py``. In order it:

1. starts localstripe (the Stripe stand-in, :mod:`billing.devstripe`) on 127.0.0.1:8420 with its
   store in ``instance/localstripe.pickle``, loaded on start so the demo survives restarts (unless
   a localstripe already answers there: then that one is used, and its data is not ours to keep);
2. runs ``flask db upgrade``, ``flask billing seed-demo`` and ``flask billing sync-plans`` (the
   demo plans on sale in localstripe);
3. serves the app on 127.0.0.1:5000, then registers its webhook endpoint
   ``http://127.0.0.1:5000/webhooks/stripe`` with localstripe, signed with the app's first
   ``STRIPE_WEBHOOK_SECRETS`` secret (localstripe forgets endpoints when it stops and sends each
   event once, so this happens on every start, once the app can receive them), and runs
   ``flask billing reconcile`` (events sent while the app was down are lost otherwise);
4. starts the worker (``flask billing worker``), which handles the stored webhook events and
   sends the outbox's mails (printed under its name, ``worker``);
5. serves the demo newspaper on 127.0.0.1:5001; prints the addresses and the demo logins.

Every child runs in a process group of its own, its output prefixed with its name. Ctrl-C (or
SIGTERM, or the terminal closing) stops them all, the app first and localstripe last, each
politely and then by force, and leaves no process behind; so does any child exiting on its own.

The app's SQLite database and the localstripe store in ``instance/`` belong together (customers,
subscriptions and plans in one are referred to by the other). When only one of the two exists,
it is moved aside (renamed with a timestamp) and both start afresh.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
APP_PORT = 5000
NEWSPAPER_PORT = 5001
APP_URL = f"http://{HOST}:{APP_PORT}"
NEWSPAPER_URL = f"http://{HOST}:{NEWSPAPER_PORT}"
WEBHOOK_URL = f"{APP_URL}/webhooks/stripe"
NEWSPAPER_APP = REPO / "examples" / "newspaper" / "app.py"
STARTUP_DEADLINE = 60.0
STOP_GRACE = 8.0

_print_lock = threading.Lock()


def say(name: str, line: str) -> None:
    """Print ``line`` prefixed with ``name``, whole (several threads print at once)."""
    with _print_lock:
        sys.stdout.write(f"{name:<6} | {line}\n")
        sys.stdout.flush()


def note(line: str) -> None:
    """A line from the launcher itself."""
    say("dev", line)


class LaunchError(RuntimeError):
    """Something the demo needs did not start; the message says what and why."""


class Child:
    """A child process in its own process group, its output printed with a prefix."""

    def __init__(
        self, name: str, argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None
    ) -> None:
        """Start ``argv`` in ``cwd``; its output (stdout and stderr) is printed as it comes."""
        self.name = name
        self.output: list[str] = []
        self.process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self._pump = threading.Thread(target=self._print, args=(self.process.stdout,), daemon=True)
        self._pump.start()

    def _print(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            say(self.name, line)

    def running(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def wait(self) -> int:
        """Wait for the process to end (and its output to be printed); its exit status."""
        status = self.process.wait()
        self._pump.join(timeout=5)
        return status

    def stop(self) -> None:
        """Stop the whole process group: SIGINT, then SIGTERM, then SIGKILL, until it is gone."""
        for sig, patience in (
            (signal.SIGINT, STOP_GRACE),
            (signal.SIGTERM, 3.0),
            (signal.SIGKILL, 3.0),
        ):
            if not self.running():
                break
            self._signal_group(sig)
            try:
                self.process.wait(timeout=patience)
            except subprocess.TimeoutExpired:
                continue
        if self._group_alive():  # something the child started outlived it
            self._signal_group(signal.SIGKILL)
        self._pump.join(timeout=5)

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True


class Launcher:
    """Starts the demo's processes one after the other, and stops whichever of them run."""

    def __init__(self) -> None:
        """Read the app's settings as the app will (environment variables, dev defaults)."""
        sys.path.insert(0, str(REPO))
        from billing import config

        self.config: dict[str, Any] = config.from_env()
        self.instance = config.INSTANCE_DIR
        self.store = self.instance / "localstripe.pickle"
        self.services: list[Child] = []
        self.seed_output: list[str] = []

    # --- steps -----------------------------------------------------------------------------

    def run(self) -> None:
        """Start everything, then wait until a child ends or we are told to stop."""
        self.instance.mkdir(exist_ok=True)
        self.refuse_busy_ports()
        self.keep_database_and_store_together()
        self.start_localstripe()
        self.flask_step("db", "upgrade")
        self.seed_output = self.flask_step("billing", "seed-demo")
        self.flask_step("billing", "sync-plans")
        self.start_app()
        # Only now: localstripe sends each event once, so the app must be there to receive it.
        self.register_webhook()
        self.flask_step("billing", "reconcile", check=False)
        self.start_worker()
        self.start_newspaper()
        self.print_welcome()
        self.supervise()

    def refuse_busy_ports(self) -> None:
        """Stop early, and say why, when the app's or the newspaper's port is taken."""
        ports = [APP_PORT] + ([NEWSPAPER_PORT] if NEWSPAPER_APP.exists() else [])
        for port in ports:
            if _port_in_use(HOST, port):
                raise LaunchError(
                    f"{HOST}:{port} is already in use (another `make run`?): stop it first."
                )

    def keep_database_and_store_together(self) -> None:
        """Move aside the SQLite database or the localstripe store when the other is missing."""
        url = str(self.config["DATABASE_URL"])
        if not url.startswith("sqlite:///"):
            return
        database = Path(url.removeprefix("sqlite:///"))
        if database.exists() == self.store.exists():
            return
        lonely, missing = (database, self.store) if database.exists() else (self.store, database)
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        for path in (lonely, *(lonely.with_name(lonely.name + s) for s in ("-wal", "-shm"))):
            if path.exists():
                path.rename(path.with_name(f"{path.name}.orphaned-{stamp}"))
        note(
            f"{lonely.name} had no {missing.name} to go with it: moved aside "
            f"({lonely.name}.orphaned-{stamp}); the demo data starts afresh."
        )

    def start_localstripe(self) -> None:
        """Start localstripe on the configured local API base, unless one already answers."""
        api_base = str(self.config["STRIPE_API_BASE"])
        parts = urlsplit(api_base)
        if parts.scheme != "http" or parts.hostname not in {"127.0.0.1", "localhost"}:
            note(f"STRIPE_API_BASE is {api_base}: not starting localstripe.")
            return
        port = parts.port or 80
        if _localstripe_answers(api_base):
            note(
                f"localstripe already answers on {api_base}: using it (it was not started "
                f"here, so its data is not kept in {self.store.relative_to(REPO)})."
            )
            return
        if _port_in_use(HOST, port):
            raise LaunchError(f"{HOST}:{port} is in use by something that is not localstripe.")
        argv = [sys.executable, "-m", "billing.devstripe", "--store", str(self.store)]
        child = Child("stripe", [*argv, "--port", str(port)], cwd=REPO)
        self.services.append(child)
        deadline = time.monotonic() + STARTUP_DEADLINE
        while not _localstripe_answers(api_base):
            if not child.running():
                raise LaunchError(f"localstripe exited with status {child.wait()}.")
            if time.monotonic() > deadline:
                raise LaunchError(f"localstripe did not answer on {api_base} in time.")
            time.sleep(0.1)

    def register_webhook(self) -> None:
        """Have localstripe send its events to the app, signed with the app's secret."""
        from billing.gateway import GatewayError, StripeGateway

        secrets = self.config["STRIPE_WEBHOOK_SECRETS"]
        if not secrets:
            raise LaunchError("STRIPE_WEBHOOK_SECRETS is empty: the app would refuse every event.")
        gateway = StripeGateway.from_config(self.config)
        try:
            registered = gateway.register_webhook_endpoint(WEBHOOK_URL, secrets[0])
        except GatewayError as error:
            raise LaunchError(f"could not register the webhook endpoint: {error}") from error
        if registered:
            note(f"Stripe events go to {WEBHOOK_URL}.")
        else:
            note(f"Set up the webhook endpoint {WEBHOOK_URL} in the Stripe Dashboard.")

    def flask_step(self, *args: str, quiet: bool = False, check: bool = True) -> list[str]:
        """Run one ``flask --app app`` command to completion; its output lines.

        A failure stops the launch, unless ``check`` is false: then it is only reported.
        """
        argv = [sys.executable, "-m", "flask", "--app", "app", *args]
        if quiet:
            done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise LaunchError(f"flask {' '.join(args)} failed:\n{done.stderr}")
            return done.stdout.splitlines()
        note(f"flask {' '.join(args)}")
        step = Child("flask", argv, cwd=REPO)
        try:
            status = step.wait()
        finally:
            step.stop()
        if status != 0 and check:
            raise LaunchError(f"flask {' '.join(args)} failed with status {status}.")
        if status != 0:
            note(f"warning: flask {' '.join(args)} failed with status {status}; carrying on.")
        return step.output

    def start_app(self) -> None:
        """Serve the app and wait until it answers its health check."""
        argv = [sys.executable, "-m", "flask", "--app", "app", "run"]
        child = Child("app", [*argv, "--host", HOST, "--port", str(APP_PORT)], cwd=REPO)
        self.services.append(child)
        self._wait_healthy(child, f"{APP_URL}/healthz")

    def start_worker(self) -> None:
        """Start the worker: webhook events and mails are handled there, never in a request."""
        argv = [sys.executable, "-m", "flask", "--app", "app", "billing", "worker"]
        self.services.append(Child("worker", argv, cwd=REPO))

    def start_newspaper(self) -> None:
        """Serve the demo newspaper, when it exists."""
        if not NEWSPAPER_APP.exists():
            return
        argv = [sys.executable, "-m", "flask", "--app", "app", "run"]
        port = ["--host", HOST, "--port", str(NEWSPAPER_PORT)]
        # The newspaper verifies tokens with its own client's token key (seed-demo creates the
        # well-known demo one), never with Tollgate's SECRET_KEYS, which it is not given.
        from billing.cli_tokens import DEMO_NEWSPAPER_TOKEN_KEY

        keys = os.environ.get("TOLLGATE_TOKEN_KEYS") or DEMO_NEWSPAPER_TOKEN_KEY
        env = {"TOLLGATE_TOKEN_KEYS": keys, "SECRET_KEYS": "", "TOKEN_KEY_WRAPPING_SECRETS": ""}
        child = Child("paper", [*argv, *port], cwd=NEWSPAPER_APP.parent, env=env)
        self.services.append(child)
        self._wait_healthy(child, f"{NEWSPAPER_URL}/")

    def _wait_healthy(self, child: Child, url: str) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while _http_status(url) is None:
            if not child.running():
                raise LaunchError(f"{child.name} exited with status {child.wait()}.")
            if time.monotonic() > deadline:
                raise LaunchError(f"{url} did not answer in time.")
            time.sleep(0.1)

    def print_welcome(self) -> None:
        """The addresses and the demo logins."""
        lines = [
            "",
            f"Tollgate       {APP_URL}   (sign up: {APP_URL}/signup)",
            f"Mail outbox    {APP_URL}/dev/outbox",
            f"localstripe    {self.config['STRIPE_API_BASE']}   (test card 4242 4242 4242 4242)",
        ]
        if NEWSPAPER_APP.exists():
            lines.append(f"Newspaper      {NEWSPAPER_URL}")
        lines += [line.strip() for line in self.seed_output if "login" in line.lower()]
        lines += [line.strip() for line in self.seed_output if "password" in line.lower()]
        lines += ["Press Ctrl-C to stop everything.", ""]
        for line in dict.fromkeys(lines):
            note(line)

    def supervise(self) -> None:
        """Wait until a service ends by itself (then raise) or a signal interrupts us."""
        while True:
            for child in self.services:
                if not child.running():
                    raise LaunchError(f"{child.name} exited with status {child.wait()}.")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop every service, the last started first (localstripe last)."""
        for child in reversed(self.services):
            if child.running():
                note(f"stopping {child.name}")
            child.stop()
        self.services.clear()


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except OSError:
        return None


def _localstripe_answers(api_base: str) -> bool:
    return _http_status(f"{api_base.rstrip('/')}/js.stripe.com/v3/") == 200


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


DEMO_BRAND = {
    "PUBLICATION_NAME": "The Daily Meridian",
    "PUBLICATION_URL": NEWSPAPER_URL,
    "PUBLICATION_ACCENT": "#8a1c1c",
    "SUPPORT_EMAIL": "help@meridian.example",
    "TERMS_URL": f"{NEWSPAPER_URL}/about#terms",
    "PRIVACY_URL": f"{NEWSPAPER_URL}/about#privacy",
    "IMPRINT_URL": f"{NEWSPAPER_URL}/about#imprint",
}
"""The demo runs under the demo newspaper's brand (settings already in the environment win)."""


def main() -> int:
    """Run the demo until Ctrl-C; the exit status (0 after Ctrl-C, 1 when something failed)."""
    for name, value in DEMO_BRAND.items():
        os.environ.setdefault(name, value)
    # Also SIGINT: a shell starting us in the background ignores it, and so would our children.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    launcher = Launcher()
    status = 0
    try:
        launcher.run()
    except KeyboardInterrupt:
        note("stopping everything")
    except LaunchError as error:
        note(f"error: {error}")
        status = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        launcher.stop()
        note("stopped.")
    return status


if __name__ == "__main__":
    sys.exit(main())
