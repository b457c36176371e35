"""What the Stripe stand-in adds to localstripe for invoices, credit and the card form.

:mod:`billing.devstripe` calls :func:`install` before serving. Each addition follows Stripe's API
reference, so the pages are tested as they will look in production:

- **Invoice numbers.** Stripe numbers an invoice when it is finalised (drafts have ``number:
  null``), as the customer's ``invoice_prefix``, a dash and a sequence per customer:
  ``8B1F3C2A-0001``. localstripe numbers none.
- **Hosted invoice page and PDF.** A finalised invoice has ``hosted_invoice_url`` (a page
  anyone with the link may open) and ``invoice_pdf`` (the PDF download); both null while draft.
  Here they are ``<server>/invoices/<id>`` and ``<server>/invoices/<id>/pdf``, served without an
  API key, like Stripe's.
- **Customer credit balance.** Stripe's ``customer.balance`` is negative for a credit. An invoice
  whose lines add up to less than zero (a switch to a cheaper plan, whose unused time is worth
  more than the new price) is paid with ``amount_due`` 0 and its remainder becomes credit; the
  customer's credit pays the next invoices first. localstripe took a credit off an invoice but
  never wrote what was left back to the customer, so every credit was lost.
- **Invoice total.** Stripe's ``total`` is what the lines come to with their tax, before any
  credit, and is negative for an invoice that credits the customer; what is charged is
  ``amount_due`` (never below zero). localstripe answered its charged amount as ``total`` too, so
  a credit invoice said ``total`` 0 with a negative ``tax``, and a paid-by-credit one ``total`` 0.
  The API now answers Stripe's ``total`` (localstripe keeps charging ``amount_due``).
- **The card form.** Stripe.js accepts the card number with spaces (as printed on the card and in
  the README); localstripe refused anything but 16 bare digits with "Bad request", and its card
  element jumped to the expiry after 16 characters, spaces counted. Spaces and dashes are
  dropped, the element counts digits only, and a wrong number, expiry or security code gets Stripe's ``card_error``
  with its wording (``incomplete_number``, ``invalid_number``, ...).
"""

from __future__ import annotations

import contextvars
import re
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

SERVER_URL: contextvars.ContextVar[str] = contextvars.ContextVar(
    "devstripe_server_url", default="http://127.0.0.1:8420"
)
"""The address this server was reached at, for the links it puts on invoices."""
INVOICE_PATH = re.compile(r"^/invoices/(in_[A-Za-z0-9]+)(/pdf)?$")
STRIPE_JS_PATH = "/js.stripe.com/v3/"
DIGITS_TYPED = "this.value.card.number.length >= 16"
"""Where localstripe's Stripe.js moves on to the expiry once 16 characters are typed, spaces
counted: a number typed with spaces lost its last digits to the expiry field."""


def luhn_ok(number: str) -> bool:
    """Whether a string of digits passes the Luhn check every card number passes."""
    total = 0
    for position, digit in enumerate(reversed(number)):
        value = int(digit)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def card_problem(card: dict[str, Any]) -> tuple[str, str] | None:
    """Stripe's error code and message for a card the form would refuse, or None (and the
    number, cleaned of spaces and dashes, written back into ``card``)."""
    number = re.sub(r"[\s-]", "", str(card.get("number") or ""))
    card["number"] = number
    if not number:
        return "incomplete_number", "Your card number is incomplete."
    if not number.isdigit():
        return "invalid_number", "Your card number is invalid."
    if len(number) < 16:
        return "incomplete_number", "Your card number is incomplete."
    if len(number) > 16 or not luhn_ok(number):
        return "invalid_number", "Your card number is invalid."
    month = str(card.get("exp_month") or "").strip()
    if not month.isdigit() or not 1 <= int(month) <= 12:
        return "invalid_expiry_month", "Your card's expiration month is invalid."
    year = str(card.get("exp_year") or "").strip()
    if not year.isdigit() or len(year) not in (2, 4):
        return "invalid_expiry_year", "Your card's expiration year is invalid."
    cvc = str(card.get("cvc") or "").strip()
    if not cvc.isdigit() or len(cvc) != 3:
        return "incomplete_cvc", "Your card's security code is incomplete."
    card["cvc"] = cvc
    return None


def invoice_prefix(customer_id: str) -> str:
    """A customer's invoice prefix: eight upper-case hex digits derived from its id."""
    return f"{zlib.crc32(customer_id.encode()):08X}"


def pdf_document(lines: list[str]) -> bytes:
    """A one-page PDF (A4, Helvetica) with ``lines`` of Latin-1 text, top to bottom."""

    def text(value: str) -> str:
        raw = value.encode("latin-1", "replace").decode("latin-1")
        return raw.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    body = ["BT", "/F1 12 Tf", "14 TL", "56 780 Td"]
    for index, line in enumerate(lines):
        body.append(f"({text(line)}) Tj" if index == 0 else f"T* ({text(line)}) Tj")
    body.append("ET")
    stream = "\n".join(body).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, content in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + content + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def _amount(minor: int, currency: str) -> str:
    sign = "-" if minor < 0 else ""
    major, cents = divmod(abs(minor), 100)
    return f"{sign}{major:,}.{cents:02d} {currency.upper()}"


def _day(timestamp: int | None) -> str:
    if not timestamp:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%d %B %Y")


def invoice_lines(invoice: Any, customer: Any) -> list[str]:
    """The text of an invoice, as its PDF and hosted page show it."""
    lines = [
        f"Invoice {invoice.number}",
        f"Date: {_day(invoice.status_transitions.get('finalized_at') or invoice.date)}",
        f"Billed to: {customer.name or ''} <{customer.email or ''}>",
        "",
    ]
    for line in invoice.lines._list:
        description = getattr(line, "description", None) or "Subscription"
        lines.append(f"{description}: {_amount(line.amount, invoice.currency)}")
    lines += [
        "",
        f"Subtotal: {_amount(invoice.subtotal, invoice.currency)}",
        f"VAT: {_amount(invoice.tax, invoice.currency)}",
        f"Credit applied: {_amount(invoice.applied_credit, invoice.currency)}",
        f"Amount due: {_amount(invoice.amount_due, invoice.currency)}",
        f"Status: {invoice.status}",
    ]
    if getattr(customer, "tax_exempt", "none") == "reverse":
        lines.append("Reverse charge")  # what Stripe prints for a customer with tax_exempt=reverse
    return lines


def lines_with_tax(invoice: Any) -> int:
    """What an invoice's lines come to before the customer's credit, as Stripe's ``total``: the
    subtotal plus the tax added on top. An inclusive tax is inside the lines already (localstripe's
    ``tax`` counts it too, so a credit with VAT inside was worth its VAT twice)."""
    inclusive = sum(
        int(ta["amount"]) for ta in invoice.total_tax_amounts or [] if ta.get("inclusive")
    )
    return int(invoice.subtotal) + int(invoice.tax or 0) - inclusive


def install(resources: Any, server: Any) -> None:
    """Add invoice numbers, hosted pages, PDFs, credit balances, Stripe's invoice total and card
    checks to localstripe."""
    from aiohttp import web

    Customer, Invoice, PaymentMethod = (
        resources.Customer,
        resources.Invoice,
        resources.PaymentMethod,
    )
    UserError = resources.UserError

    Customer.balance = property(lambda self: -int(self.account_balance or 0))
    Customer.invoice_prefix = property(lambda self: invoice_prefix(self.id))

    original_finalize = Invoice._finalize

    def finalize(self: Any) -> None:
        original_finalize(self)
        numbered = [
            i
            for key, i in resources.store.items()
            if key.startswith("invoice:") and i.customer == self.customer and i._devstripe_number
        ]
        self._devstripe_number = f"{invoice_prefix(self.customer)}-{len(numbered) + 1:04d}"
        # localstripe already takes the credit the customer had when the invoice was created off
        # what it charges (its ``total``); what it never did is keep what is left, or the excess
        # of an invoice below zero, as the customer's credit, as Stripe does.
        customer = Customer._api_retrieve(self.customer)
        customer.account_balance = max(0, self.starting_balance - lines_with_tax(self))

    Invoice._finalize = finalize
    original_export = Invoice._export

    def export(self: Any, expand: Any = None) -> dict[str, Any]:
        exported: dict[str, Any] = original_export(self, expand=expand)
        exported["total"] = lines_with_tax(self)
        return exported

    Invoice._export = export
    Invoice._devstripe_number = None
    Invoice.number = property(lambda self: self._devstripe_number)
    Invoice.applied_credit = property(
        lambda self: min(self.starting_balance or 0, max(lines_with_tax(self), 0))
    )

    def link(path: str) -> Callable[[Any], str | None]:
        return lambda self: f"{SERVER_URL.get()}/invoices/{self.id}{path}" if self.number else None

    Invoice.hosted_invoice_url = property(link(""))
    Invoice.invoice_pdf = property(link("/pdf"))

    original_pm_init = PaymentMethod.__init__

    def payment_method_init(self: Any, type: Any = None, card: Any = None, **kwargs: Any) -> None:
        if type == "card" and isinstance(card, dict):
            problem = card_problem(card)
            if problem is not None:
                code, message = problem
                error = UserError(402, message, {"code": code, "param": "number"})
                error.body["error"]["type"] = "card_error"
                raise error
        original_pm_init(self, type=type, card=card, **kwargs)

    PaymentMethod.__init__ = payment_method_init

    def invoice_response(invoice_id: str, pdf: bool) -> Any:
        invoice = resources.store.get(f"invoice:{invoice_id}")
        if invoice is None or not invoice.number:
            return web.Response(status=404, text="No such invoice")
        lines = invoice_lines(invoice, Customer._api_retrieve(invoice.customer))
        if pdf:
            return web.Response(
                body=pdf_document(lines),
                content_type="application/pdf",
                headers={"Content-Disposition": f'inline; filename="{invoice.number}.pdf"'},
            )
        items = "".join(f"<p>{escape(line)}</p>" for line in lines if line)
        page = (
            f"<!doctype html><html lang=en><meta charset=utf-8><title>Invoice {invoice.number}"
            f"</title><h1>Invoice {escape(invoice.number)}</h1>{items}"
            f'<p><a href="{invoice.invoice_pdf}">Download the PDF</a></p></html>'
        )
        return web.Response(text=page, content_type="text/html")

    script = (Path(resources.__file__).parent / "localstripe-v3.js").read_text()
    if DIGITS_TYPED not in script:
        raise RuntimeError("localstripe's Stripe.js changed: check devstripe_billing")
    script = script.replace(
        DIGITS_TYPED, DIGITS_TYPED.replace("number", "number.replace(/[\\s-]/g, '')")
    )

    @web.middleware
    async def billing_middleware(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        SERVER_URL.set(f"{request.scheme}://{request.host}")
        if request.path == STRIPE_JS_PATH and request.method == "GET":
            return web.Response(text=script, content_type="application/javascript")
        match = INVOICE_PATH.match(request.path)
        if match and request.method == "GET":
            return invoice_response(match.group(1), bool(match.group(2)))
        return await handler(request)

    server.app.middlewares.insert(0, billing_middleware)
