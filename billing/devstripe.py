"""localstripe, the Stripe stand-in, with its store in a file of our choosing.

localstripe keeps every object in memory and pickles the whole store after each write to the fixed
file ``/tmp/localstripe.pickle``, which it also loads on start unless given ``--from-scratch``. One
fixed file shared by every server on the machine is wrong for us twice over: parallel test servers
overwrite each other's store (and a development server would load their test data), and a file
left by another user makes every write fail. This launcher runs the same server with the store at
``--store`` instead, written atomically (a crash mid-write never leaves half a pickle), and loads
it on start only when asked::

    python -m billing.devstripe --store instance/localstripe.pickle --port 8420   # make run
    python -m billing.devstripe --store /tmp/x/store.pickle --port 0 --from-scratch  # tests

Registered webhook endpoints live in memory only (localstripe does not store them): register
yours again after every start (``StripeGateway.register_webhook_endpoint``).
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from billing import devstripe_billing

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8420


class StoreError(RuntimeError):
    """The store file exists but cannot be loaded."""


def dump(store: dict[str, Any], path: Path) -> None:
    """Pickle ``store`` to ``path`` atomically (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp")
    with temporary.open("wb") as f:
        pickle.dump(store, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(temporary, path)


def load(store: dict[str, Any], path: Path) -> int:
    """Fill ``store`` from the file at ``path`` if there is one; how many objects it held.

    Unpickling calls the store's ``__setitem__`` for every object, which saves the store: switch
    saving off while loading.
    """
    try:
        with path.open("rb") as f:
            saved = pickle.load(f)  # noqa: S301 - our own server's file, in our own directory
    except FileNotFoundError:
        return 0
    except Exception as exc:
        raise StoreError(f"cannot load the localstripe store {path}: {exc}") from exc
    store.clear()
    store.update(saved)
    return len(saved)


CARD_COUNTRIES: dict[str, str] = {
    "4000000400000008": "AT",
    "4000000560000004": "BE",
    "4000002080000001": "DK",
    "4000002460000001": "FI",
    "4000002500000003": "FR",
    "4000002760000016": "DE",
    "4000003720000005": "IE",
    "4000003800000008": "IT",
    "4000004420000006": "LU",
    "4000005280000002": "NL",
    "4000005780000007": "NO",
    "4000006200000007": "PT",
    "4000007240000007": "ES",
    "4000007520000008": "SE",
    "4000008260000000": "GB",
}
"""Issuing countries of Stripe's documented test cards by country ("International cards")."""

GENERIC_CARD_COUNTRY = "BE"
"""The issuing country given to every other test card (4242 4242 4242 4242, the decline and 3-D
Secure cards, ...): the demo publisher's country, so the generic cards agree with the demo readers'
country. On Stripe those generic cards are US cards; a reader using one there is asked to confirm
their country, as they are here with a card of another country."""


def install_stripe_tax_behaviour(
    resources: Any, generic_card_country: str = GENERIC_CARD_COUNTRY
) -> None:
    """Make localstripe's Tax Rates and cards behave as Stripe documents them.

    - An *inclusive* Tax Rate's amount is the VAT inside the line: ``amount * p / (100 + p)``,
      rounded half up to the minor unit, and it is not added to the invoice's total (localstripe
      adds ``amount * p / 100`` to the total whatever ``inclusive`` says). Exclusive rates keep
      localstripe's arithmetic. Invoices gain Stripe's ``total_excluding_tax``.
    - A card's ``country`` is the issuing country of Stripe's test card of that number, or
      ``generic_card_country`` for the generic test cards (localstripe says ``FR`` for every
      card), so the card-country evidence is real in the demo and the tests.
    """
    from decimal import ROUND_HALF_UP, Decimal

    def tax_amount(self: Any, amount: int) -> dict[str, Any]:
        percentage = Decimal(str(self.percentage))
        if self.inclusive:
            exact = Decimal(abs(amount)) * percentage / (Decimal(100) + percentage)
        else:
            exact = Decimal(abs(amount)) * percentage / Decimal(100)
        tax = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
        return {
            "amount": tax if amount >= 0 else -tax,
            "inclusive": self.inclusive,
            "tax_rate": self.id,
            "taxable_amount": amount - (tax if amount >= 0 else -tax) if self.inclusive else amount,
        }

    def exclusive_tax(self: Any) -> int:
        if self.tax_percent is not None:
            return int(self.subtotal * self.tax_percent / 100.0)
        return sum(int(ta["amount"]) for ta in self.total_tax_amounts if not ta["inclusive"])

    def total(self: Any) -> int:
        return max(0, int(self.subtotal) + exclusive_tax(self) - int(self.starting_balance))

    def total_excluding_tax(self: Any) -> int:
        inclusive = sum(int(ta["amount"]) for ta in self.total_tax_amounts if ta["inclusive"])
        return int(self.subtotal) - inclusive

    resources.TaxRate._tax_amount = tax_amount
    resources.Invoice.total = property(total)
    resources.Invoice.total_excluding_tax = property(total_excluding_tax)

    original_init = resources.PaymentMethod.__init__

    def payment_method_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if getattr(self, "type", None) == "card":
            self.card["country"] = CARD_COUNTRIES.get(self._card_number, generic_card_country)

    resources.PaymentMethod.__init__ = payment_method_init


TAX_EXEMPT_VALUES = ("none", "exempt", "reverse")
"""The values Stripe documents for a customer's ``tax_exempt``."""


def install_customer_tax_exempt(resources: Any) -> None:
    """Give localstripe's customers Stripe's ``tax_exempt`` (localstripe refuses the parameter).

    As Stripe documents it: ``none`` (the default), ``exempt`` or ``reverse`` on create and
    update, an empty string on update meaning ``none``, anything else a 400 naming the parameter.
    Customers saved before this existed read as ``none``. Like Stripe with manual Tax Rates, the
    value changes no amount: Tollgate itself sets no Tax Rate on a reverse-charged subscription.
    """
    from localstripe.errors import UserError

    def checked(value: Any, *, updating: bool) -> str:
        if updating and value == "":
            return "none"
        if value not in TAX_EXEMPT_VALUES:
            raise UserError(
                400,
                f"Invalid tax_exempt: must be one of {', '.join(TAX_EXEMPT_VALUES)}",
            )
        return str(value)

    customer = resources.Customer
    customer.tax_exempt = "none"
    original_init = customer.__init__
    original_update = customer._api_update.__func__

    def customer_init(self: Any, *args: Any, tax_exempt: Any = "none", **kwargs: Any) -> None:
        value = checked(tax_exempt, updating=False)
        original_init(self, *args, **kwargs)
        self.tax_exempt = value

    def api_update(cls: Any, id: str, /, **data: Any) -> Any:
        if "tax_exempt" in data:
            data["tax_exempt"] = checked(data["tax_exempt"], updating=True)
        return original_update(cls, id, **data)

    customer.__init__ = customer_init
    customer._api_update = classmethod(api_update)


def install_tax_rate_clearing(resources: Any) -> None:
    """Let a subscription's ``default_tax_rates`` be cleared with an empty string, as Stripe
    documents for every list parameter (localstripe answers 400): its next invoices then carry
    no tax (a reader who moved outside the EU, a customer now reverse-charged)."""
    subscription = resources.Subscription
    original_update = subscription._update

    def subscription_update(self: Any, *args: Any, **data: Any) -> Any:
        clear = data.get("default_tax_rates") == ""
        if clear:
            data["default_tax_rates"] = None
        result = original_update(self, *args, **data)
        if clear:
            self.default_tax_rates = []
        return result

    subscription._update = subscription_update


def main(
    store_path: str | os.PathLike[str],
    port: int = DEFAULT_PORT,
    load_existing: bool = False,
    host: str = DEFAULT_HOST,
) -> None:
    """Serve localstripe on ``host:port`` with its store in ``store_path``, until interrupted.

    With ``load_existing`` the objects saved there by an earlier run are loaded first; otherwise
    the server starts empty (the file is overwritten at the first write).
    """
    from aiohttp import web
    from localstripe import resources, server

    from billing import devstripe_invoicing, devstripe_prorations, devstripe_renewals

    devstripe_invoicing.install(resources, server)
    path = Path(store_path).resolve()
    install_stripe_tax_behaviour(resources)
    install_customer_tax_exempt(resources)
    install_tax_rate_clearing(resources)
    resources.Store.try_load_from_disk = lambda self: None
    # Unpickling a Store sets its items one by one, and each set would save the whole store.
    resources.Store.dump_to_disk = lambda self: None
    loaded = load(resources.store, path) if load_existing else 0
    resources.Store.dump_to_disk = lambda self: dump(self, path)
    devstripe_billing.install(resources, server)
    devstripe_prorations.install(resources)
    devstripe_renewals.install(resources, server)

    access_log = logging.getLogger("aiohttp.access")
    access_log.setLevel(logging.DEBUG)
    access_log.addHandler(logging.StreamHandler())
    origin = "loaded with" if load_existing else "starting from scratch,"
    print(
        f"localstripe on http://{host}:{port}, store {path} ({origin} {loaded} objects)",
        flush=True,
    )
    web.run_app(server.app, host=host, port=port, access_log=access_log, print=None)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m billing.devstripe",
        description="Run localstripe with its store in a file of your choosing.",
    )
    parser.add_argument("--store", required=True, help="the store file (pickle)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    parser.add_argument("--host", default=DEFAULT_HOST, help="default %(default)s")
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="start empty instead of loading the objects saved in --store",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = _parse(sys.argv[1:])
    try:
        main(arguments.store, arguments.port, not arguments.from_scratch, arguments.host)
    except StoreError as error:
        sys.exit(f"{error}\nMove it away to start with an empty localstripe.")
