"""The reports on histories with known answers, and the agreements between them to the cent on
generated histories (hypothesis)."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from billing.models import InvoiceStatus, MailStatus, TrialStatus
from billing.models import SubscriptionEventKind as Kind
from billing.services import reports
from billing.services.reports import movements, vat
from billing.services.reports.base import Filters, Granularity, Owner
from tests import factories
from tests import report_support as history

CLOCK_NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
Q4 = Filters(start=date(2026, 10, 1), end=date(2026, 12, 31), granularity=Granularity.QUARTER)


def at(month: int, day: int, year: int = 2026) -> datetime:
    """Noon UTC on a day."""
    return datetime(year, month, day, 12, tzinfo=UTC)


def build(session: Session, name: str, filters: Filters) -> Any:
    """The built table of report ``name``."""
    return reports.get(name).build(session, filters, CLOCK_NOW, None)


def rows(table: Any) -> list[dict[str, Any]]:
    """A table's rows keyed by column."""
    keys = [c.key for c in table.columns]
    return [dict(zip(keys, row, strict=True)) for row in table.rows]


@pytest.fixture
def publisher_in_belgium(app: Flask) -> None:
    """The publisher's country is Belgium."""
    app.config["PUBLISHER_COUNTRY"] = "BE"


# --- known answers -------------------------------------------------------------------------


@pytest.mark.usefixtures("publisher_in_belgium")
def test_the_vat_return_splits_oss_home_reverse_charge_and_outside_eu_with_refunds_and_corrections(
    session: Session,
) -> None:
    dutch = history.customer(session, at(9, 1), country="NL")
    german = history.customer(session, at(9, 1), country="DE")
    belgian = history.customer(session, at(9, 1), country="BE")
    american = history.customer(session, at(9, 1), country="US")
    company = history.customer(session, at(9, 1), country="FR", group=True)
    sold = history.invoice(session, dutch, at(10, 5), 1200, 208)
    history.invoice(session, dutch, at(11, 5), 1200, 208)
    earlier = history.invoice(session, german, at(9, 20), 1200, 192)
    history.invoice(session, german, at(10, 20), 1200, 192)
    history.invoice(session, belgian, at(10, 7), 1200, 208)
    history.invoice(session, american, at(10, 8), 1200, 0)
    history.invoice(session, company, at(10, 9), 96000, 0, vat_id="FR40303265045")
    history.invoice(session, dutch, at(10, 10), 1200, 208, status=InvoiceStatus.OPEN)
    history.refund(session, sold, 600, at(11, 1))
    history.refund(session, earlier, 1200, at(10, 2))

    table = build(session, "vat", Q4)

    lines = {(r["scope"], r["kind"], r["country"], str(r["rate"])): r for r in rows(table)}
    assert set(lines) == {
        ("oss", "sale", "NL", "21.0"),
        ("oss", "refund", "NL", "21.0"),
        ("oss", "sale", "DE", "19.0"),
        ("home", "sale", "BE", "21.0"),
        ("outside EU", "sale", "US", "0.0"),
        ("reverse charge", "sale", "FR", "0.0"),
    }
    nl = lines[("oss", "sale", "NL", "21.0")]
    assert (nl["taxable"], nl["vat"], nl["taxable_eur"], nl["vat_eur"], nl["invoices"]) == (
        1984,
        416,
        1984,
        416,
        2,
    )
    nl_refund = lines[("oss", "refund", "NL", "21.0")]
    assert (nl_refund["taxable"], nl_refund["vat"]) == (-496, -104), "the refund's VAT share"
    [correction] = table.sections["Corrections of earlier periods"].rows
    assert correction == ("Q4.2026", "DE", "Q3.2026", "eur", -192, -192, 1)
    [total] = table.totals
    assert total[0] == "Q4.2026"
    assert total[-3:-1] == (1984 - 496 + 1008, 416 - 104 + 192 - 192), "OSS due with corrections"


def test_the_vat_return_uses_the_rate_an_invoice_was_taxed_at_not_one_guessed_from_its_cents(
    session: Session,
) -> None:
    french = history.customer(session, at(9, 1), country="FR")
    small = history.invoice(session, french, at(10, 5), 100, 2)  # 2 / 98 would read as 2.0 %
    small.tax_rate = Decimal("2.1")
    session.flush()

    table = build(session, "vat", Q4)

    assert {(r["country"], str(r["rate"])) for r in rows(table)} == {("FR", "2.1")}


def test_a_credit_invoice_takes_its_net_and_vat_off_the_revenue_and_the_vat_return(
    session: Session,
) -> None:
    """A switch to a cheaper plan issues an invoice whose total (and VAT) Stripe makes negative."""
    french = history.customer(session, at(9, 1), country="FR")
    history.invoice(session, french, at(10, 5), 12000, 250)
    history.invoice(session, french, at(10, 20), -10800, -225)

    [line] = rows(build(session, "vat", Q4))
    revenue = build(session, "invoices", Q4)

    assert (line["country"], line["rate"], line["invoices"]) == ("FR", Decimal("2.1"), 2)
    assert (line["taxable"], line["vat"]) == (1200 - 25, 25), "one line at the rate of both"
    assert revenue.totals[0][7:10] == (1200 - 25, 25, 1200), "net, VAT, gross"


def test_a_quarter_with_nothing_sold_is_a_nil_return(session: Session) -> None:
    table = build(session, "vat", Q4)

    assert table.rows == []
    assert [t[0] for t in table.totals] == ["Q4.2026"]
    assert table.totals[0][-3:-1] == (0, 0)
    assert any("Nil return" in note for note in table.notes)


def test_other_currencies_are_converted_at_the_ecb_rate_of_the_periods_last_day(
    session: Session,
) -> None:
    irish = history.customer(session, at(9, 1), country="IE")
    history.invoice(session, irish, at(9, 3), 1230, 230, currency="gbp")
    history.invoice(session, irish, at(11, 3), 1230, 230, currency="gbp")
    q3 = Filters(start=date(2026, 7, 1), end=date(2026, 12, 31), granularity=Granularity.QUARTER)

    table = build(session, "vat", q3)

    [september, november] = rows(table)
    assert september["ecb_rate"] == Decimal("0.85463"), "the ECB's GBP rate of 2026-09-30"
    assert (september["taxable_eur"], september["vat_eur"]) == (1170, 269)
    assert november["taxable_eur"] is None, "no rate for 2026-12-31 in the file yet"
    assert any("No ECB rate for GBP at the end of Q4.2026" in note for note in table.notes)


def _lifecycle_history(session: Session) -> dict[str, Any]:
    monthly = history.plan(session)
    yearly = history.plan(session, "individual-yearly", 12000, "year")
    anna = history.customer(session, at(9, 1))
    bert = history.customer(session, at(9, 1))
    cleo = history.customer(session, at(9, 1))
    first = history.subscription(session, anna, monthly, at(10, 5))
    history.invoice(session, anna, at(10, 5), 1200, 208, sub=first)
    history.entry(session, first, Kind.CREATED, at(10, 5), 0, 1200)
    long = history.subscription(session, bert, yearly, at(10, 10))
    history.invoice(session, bert, at(10, 10), 12000, 2083, sub=long)
    history.entry(session, long, Kind.CREATED, at(10, 10), 0, 1000)
    history.entry(session, first, Kind.CANCELLED, at(10, 20), 1200, 1200)
    history.entry(session, first, Kind.ENDED, at(11, 5), 1200, 0)
    failing = history.subscription(session, cleo, monthly, at(11, 10))
    history.invoice(session, cleo, at(11, 10), 1200, 208, sub=failing)
    history.entry(session, failing, Kind.CREATED, at(11, 10), 0, 1200)
    history.entry(session, failing, Kind.PAST_DUE, at(12, 10), 1200, 1200)
    history.entry(session, failing, Kind.ENDED, at(12, 20), 1200, 0)
    again = history.subscription(session, anna, monthly, at(12, 1))
    history.invoice(session, anna, at(12, 1), 1200, 208, sub=again)
    history.entry(session, again, Kind.CREATED, at(12, 1), 0, 1200)
    return {"bert": long}


def test_mrr_movements_follow_chartmoguls_definitions_without_vat(session: Session) -> None:
    _lifecycle_history(session)

    table = build(session, "mrr", Q4)

    by_month = {r["month"]: r for r in rows(table)}
    october, november, december = (by_month[date(2026, m, 1)] for m in (10, 11, 12))
    assert (october["start"], october["new"], october["end"]) == (0, 992 + 826, 1818)
    assert (november["churn"], november["new"], november["end"]) == (992, 992, 1818)
    assert (december["reactivation"], december["churn"], december["end"]) == (992, 992, 1818)
    assert all(r["check"] == "yes" for r in rows(table))
    [total] = table.totals
    assert total[2:9] == (0, 992 + 826 + 992, 0, 992, 0, 992 + 992, 1818)


def test_churn_is_voluntary_when_cancelled_and_involuntary_when_the_payment_failed(
    session: Session,
) -> None:
    _lifecycle_history(session)

    table = build(session, "churn", Q4)

    by_month = {r["month"]: r for r in rows(table)}
    november, december = by_month[date(2026, 11, 1)], by_month[date(2026, 12, 1)]
    assert (november["churned_voluntary"], november["churned_involuntary"]) == (1, 0)
    assert (december["churned_voluntary"], december["churned_involuntary"]) == (0, 1)
    assert november["customers_start"] == 2
    assert november["subscriber_churn"] == Decimal("0.5")
    assert november["revenue_churn"] == (Decimal(992) / Decimal(1818)).quantize(Decimal("0.0001"))
    assert (december["churn_involuntary"], december["churn_voluntary"]) == (992, 0)


def test_a_past_months_mrr_is_the_same_after_later_events(session: Session) -> None:
    created = _lifecycle_history(session)
    october = Filters(start=date(2026, 10, 1), end=date(2026, 10, 31))
    before = build(session, "mrr", october).rows

    bert = created["bert"]
    history.entry(session, bert, Kind.SEATS_CHANGED, at(11, 15), 1000, 3000)
    history.entry(session, bert, Kind.ENDED, at(12, 28), 3000, 0)

    assert build(session, "mrr", october).rows == before


def test_mrr_loses_vat_at_the_rate_of_the_invoices_issued_by_then_so_a_rate_change_moves_it(
    session: Session,
) -> None:
    monthly = history.plan(session)
    reader = history.customer(session, at(9, 1))
    sub = history.subscription(session, reader, monthly, at(10, 5))
    discounted = history.invoice(session, reader, at(10, 5), 1000, 174, sub=sub)
    discounted.tax_rate = Decimal("21.0000")
    history.entry(session, sub, Kind.CREATED, at(10, 5), 0, 1200)
    october = Filters(start=date(2026, 10, 1), end=date(2026, 10, 31))
    before = build(session, "mrr", october).rows
    renewal = history.invoice(session, reader, at(11, 5), 1200, 68, sub=sub)
    renewal.tax_rate = Decimal("6.0000")
    unpaid = history.invoice(
        session, reader, at(12, 5), 1200, 68, sub=sub, status=InvoiceStatus.OPEN
    )
    unpaid.tax_rate = Decimal("6.0000")
    session.flush()

    table = build(session, "mrr", Q4)

    by_month = {r["month"]: r for r in rows(table)}
    oct_row, nov_row, dec_row = (by_month[date(2026, m, 1)] for m in (10, 11, 12))
    assert (oct_row["new"], oct_row["end"]) == (992, 992), "1200 less 21 % VAT, not 174 / 1000"
    assert (nov_row["expansion"], nov_row["end"]) == (1132 - 992, 1132), "less 6 % from 5 Nov"
    assert (dec_row["expansion"], dec_row["end"]) == (0, 1132)
    assert all(r["check"] == "yes" for r in rows(table))
    assert build(session, "mrr", october).rows == before, "October keeps the rate it had"


def test_trial_cohorts_count_conversions_and_the_time_to_convert(session: Session) -> None:
    def trial(started: datetime, status: TrialStatus, converted_days: int | None = None) -> None:
        factories.TrialFactory(
            started_at=started,
            status=status,
            converted_at=started + timedelta(days=converted_days) if converted_days else None,
        )

    trial(at(10, 1), TrialStatus.CONVERTED, 14)
    trial(at(10, 3), TrialStatus.CONVERTED, 5)
    trial(at(10, 8), TrialStatus.EXPIRED)
    trial(at(10, 30), TrialStatus.EXPIRED)
    trial(at(11, 20), TrialStatus.ACTIVE)
    filters = Filters(
        start=date(2026, 10, 1), end=date(2026, 11, 30), granularity=Granularity.MONTH
    )

    table = build(session, "trials", filters)

    october, november = rows(table)
    assert (october["cohort"], october["started"], october["converted"], october["expired"]) == (
        "2026-10",
        4,
        2,
        2,
    )
    assert october["conversion"] == Decimal("0.5")
    assert (october["mean_days"], october["median_days"]) == (Decimal("9.5"), Decimal("9.5"))
    assert (november["running"], november["conversion"]) == (1, Decimal(0))
    weekly = build(
        session,
        "trials",
        Filters(start=filters.start, end=filters.end, granularity=Granularity.WEEK),
    )
    assert [r["cohort"] for r in rows(weekly)] == ["2026-W40", "2026-W41", "2026-W44", "2026-W47"]


def test_the_groups_report_shows_seats_bought_used_idle_and_renewal(session: Session) -> None:
    from billing.models import GroupIPRange, GroupMembership, MembershipRole

    seat = history.plan(session, "group-seat-yearly", 9600, "year")
    company = history.customer(session, at(9, 1), country="DE", group=True)
    sub = history.subscription(session, company, seat, at(9, 1), quantity=10)
    sub.current_period_end = at(9, 1, 2027)
    for n in range(4):
        member = history.customer(session, at(9, 1))
        session.add(
            GroupMembership(
                group_id=company.group_id,
                reader_id=member.reader_id,
                role=MembershipRole.MEMBER,
                joined_at=at(9, 2),
                removed_at=at(10, 1) if n == 3 else None,
            )
        )
    session.add(GroupIPRange(group_id=company.group_id, cidr="192.0.2.0/24", created_at=at(9, 1)))
    session.flush()

    table = build(session, "groups", Q4)
    [row] = rows(table)

    assert (row["bought"], row["used"], row["idle"], row["ip_ranges"]) == (10, 3, 7, 1)
    assert table.totals[0][0] == "1 group"
    assert row["utilisation"] == Decimal("0.3")
    assert row["renews"] == at(9, 1, 2027)


def test_the_dunning_report_lists_past_due_subscriptions_with_the_amount_at_risk(
    session: Session,
) -> None:
    from billing.models import OutboxMessage, SubscriptionStatus

    monthly = history.plan(session)
    owner = history.customer(session, at(9, 1))
    sub = history.subscription(session, owner, monthly, at(10, 1))
    sub.status = SubscriptionStatus.PAST_DUE
    sub.past_due_since = CLOCK_NOW - timedelta(days=4)
    history.invoice(session, owner, at(11, 1), 1200, 208, sub=sub, status=InvoiceStatus.OPEN)
    session.add(
        OutboxMessage(
            key="payment-failed-test",
            template="payment_failed",
            created_at=CLOCK_NOW - timedelta(days=4),
            status=MailStatus.SENT,
            sent_at=CLOCK_NOW - timedelta(days=4),
            to=owner.email,
            subject="Your payment failed",
            body="...",
        )
    )
    healthy = history.subscription(session, history.customer(session, at(9, 1)), monthly, at(10, 1))
    assert healthy.status == SubscriptionStatus.ACTIVE
    session.flush()

    table = build(session, "dunning", Q4)

    [row] = rows(table)
    assert (row["email"], row["days"], row["at_risk"], row["last_subject"]) == (
        owner.email,
        4,
        1200,
        "Your payment failed",
    )
    assert table.totals == [
        ("Total at risk", None, None, None, None, None, 1200, "eur", None, None)
    ]


# --- agreements on generated histories -----------------------------------------------------

COUNTRIES = ["BE", "NL", "DE", "FR", "IE", "US"]
START = datetime(2026, 7, 1, tzinfo=UTC)
SPAN = int(timedelta(days=240).total_seconds())

an_invoice = st.tuples(
    st.integers(0, SPAN),  # issued, seconds after START
    st.sampled_from(COUNTRIES),
    st.sampled_from(["eur", "usd"]),
    st.integers(100, 200_000),  # total
    st.integers(0, 30),  # VAT rate in %
    st.sampled_from(
        [InvoiceStatus.PAID, InvoiceStatus.PAID, InvoiceStatus.OPEN, InvoiceStatus.VOID]
    ),
    st.lists(st.tuples(st.integers(0, SPAN), st.integers(1, 100)), max_size=2),  # refunds
)
a_range = st.tuples(st.integers(0, 200), st.integers(0, 200)).map(
    lambda pair: (
        START.date() + timedelta(days=min(pair)),
        START.date() + timedelta(days=max(pair)),
    )
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(invoices=st.lists(an_invoice, max_size=25), span=a_range, owner_kind=st.booleans())
def test_the_revenue_reports_net_plus_vat_equals_the_vat_reports_taxable_plus_vat(
    session: Session, invoices: list[Any], span: tuple[date, date], owner_kind: bool
) -> None:
    try:
        owners = {
            c: history.customer(session, START, country=c, group=owner_kind) for c in COUNTRIES
        }
        refunded_in_range: dict[str, int] = defaultdict(int)
        filters = Filters(start=span[0], end=span[1], granularity=Granularity.MONTH)
        for offset, country, currency, total, rate, status, refunds in invoices:
            tax = total - round(total * 100 / (100 + rate))
            row = history.invoice(
                session,
                owners[country],
                START + timedelta(seconds=offset),
                total,
                tax,
                currency=currency,
                status=status,
            )
            left = row.amount_paid
            for when, percent in refunds:
                amount = min(left, max(1, total * percent // 100))
                if amount <= 0:
                    break
                moment = START + timedelta(seconds=when)
                history.refund(session, row, amount, moment)
                left -= amount
                if filters.start_at <= moment < filters.end_before:
                    refunded_in_range[currency] += vat.refund_vat(amount, total, tax)

        revenue = build(session, "invoices", filters)
        returned = build(session, "vat", filters)

        by_currency: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for line in rows(returned):
            if line["kind"] == "sale":
                by_currency[line["currency"]][0] += line["taxable"]
                by_currency[line["currency"]][1] += line["vat"]
        revenue_totals = {t[12]: (t[7], t[8]) for t in revenue.totals}
        assert {c: tuple(v) for c, v in by_currency.items()} == revenue_totals
        refund_vat: dict[str, int] = defaultdict(int)
        for line in rows(returned):
            if line["kind"] == "refund":
                refund_vat[line["currency"]] -= line["vat"]
        for correction in returned.sections["Corrections of earlier periods"].rows:
            refund_vat[correction[3]] -= correction[4]
        assert {c: v for c, v in refund_vat.items() if v} == {
            c: v for c, v in refunded_in_range.items() if v
        }
    finally:
        session.rollback()


a_subscription = st.tuples(
    st.integers(0, 6),  # customer
    st.sampled_from([(1200, "month"), (12000, "year"), (900, "month")]),
    st.integers(0, 21),  # VAT rate of its invoices, in %
    st.integers(0, SPAN),  # start
    st.lists(
        st.tuples(
            st.integers(1, SPAN // 4),  # seconds after the previous change
            st.sampled_from(["seats", "past_due", "recovered", "ended", "rate"]),
            st.integers(1, 5),  # seats, or the new VAT rate in fifths of 25 %
        ),
        max_size=4,
    ),
)


def _expected_mrr(lives: list[dict[str, Any]], moment: datetime) -> int:
    """MRR (without VAT) at ``moment`` straight from the entries: each subscription's last
    amount before then, less the VAT share of its last invoice before then (its first one's
    before it)."""
    total = 0
    for life in lives:
        amount = 0
        for when, after in life["amounts"]:
            if when < moment:
                amount = after
        fraction = life["shares"][0][1]
        for when, share in life["shares"]:
            if when < moment:
                fraction = share
        total += amount - math.floor(amount * fraction + Fraction(1, 2))
    return total


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(subscriptions=st.lists(a_subscription, max_size=10), span=a_range)
def test_mrr_movements_sum_to_the_change_in_mrr_every_month(
    session: Session, subscriptions: list[Any], span: tuple[date, date]
) -> None:
    try:
        plans = {
            (1200, "month"): history.plan(session),
            (12000, "year"): history.plan(session, "individual-yearly", 12000, "year"),
            (900, "month"): history.plan(session, "cheap-monthly", 900, "month"),
        }
        customers = [history.customer(session, START) for _ in range(7)]
        lives = []
        for who, terms, rate, start, changes in subscriptions:
            of = plans[terms]
            sub = history.subscription(
                session, customers[who], of, START + timedelta(seconds=start)
            )
            unit = of.monthly_amount()
            total = of.amount
            tax = total - round(total * 100 / (100 + rate))
            moment = START + timedelta(seconds=start)
            history.invoice(session, customers[who], moment, total, tax, sub=sub)
            history.entry(session, sub, Kind.CREATED, moment, 0, unit)
            life = {"amounts": [(moment, unit)], "shares": [(moment, Fraction(tax, total))]}
            mrr = unit
            for gap, change, seats in changes:
                moment += timedelta(seconds=gap)
                if change == "seats":
                    after = of.monthly_amount(seats)
                    history.entry(session, sub, Kind.SEATS_CHANGED, moment, mrr, after)
                    mrr = after
                elif change == "rate":
                    percent = 5 * seats
                    charged = total - round(total * 100 / (100 + percent))
                    renewal = history.invoice(
                        session, customers[who], moment, total, charged, sub=sub
                    )
                    renewal.tax_rate = Decimal(percent)
                    life["shares"].append((moment, Fraction(percent, 100 + percent)))
                elif change == "ended":
                    history.entry(session, sub, Kind.ENDED, moment, mrr, 0)
                    life["amounts"].append((moment, 0))
                    break
                else:
                    kind = Kind.PAST_DUE if change == "past_due" else Kind.RECOVERED
                    history.entry(session, sub, kind, moment, mrr, mrr)
                life["amounts"].append((moment, mrr))
            lives.append(life)
        filters = Filters(start=span[0], end=span[1], currency="eur")

        found = movements.monthly(session, filters)

        for month in found:
            begins = datetime(month.month.year, month.month.month, 1, tzinfo=UTC)
            ends = datetime.combine(
                movements.next_month(month.month), datetime.min.time(), tzinfo=UTC
            )
            assert month.start == _expected_mrr(lives, begins)
            assert month.end == _expected_mrr(lives, ends)
            assert month.balances
            assert month.churn == month.churn_voluntary + month.churn_involuntary
    finally:
        session.rollback()


def test_owner_and_country_filters_narrow_the_revenue_report(session: Session) -> None:
    person = history.customer(session, at(9, 1), country="NL")
    company = history.customer(session, at(9, 1), country="DE", group=True)
    history.invoice(session, person, at(10, 5), 1200, 208)
    history.invoice(session, company, at(10, 6), 96000, 0)

    groups_only = build(session, "invoices", Filters(start=Q4.start, end=Q4.end, owner=Owner.GROUP))
    dutch_only = build(session, "invoices", Filters(start=Q4.start, end=Q4.end, country="NL"))

    assert [r["owner"] for r in rows(groups_only)] == ["group"]
    assert [r["country"] for r in rows(dutch_only)] == ["NL"]


@pytest.mark.usefixtures("publisher_in_belgium")
def test_the_owner_filter_keeps_the_vat_return_to_groups_or_readers_refunds_included(
    session: Session,
) -> None:
    person = history.customer(session, at(9, 1), country="NL")
    company = history.customer(session, at(9, 1), country="DE", group=True)
    bought = history.invoice(session, person, at(10, 5), 1210, 210)
    history.invoice(session, company, at(10, 6), 11900, 1900)
    history.refund(session, bought, 1210, at(10, 20))
    quarter = {"start": Q4.start, "end": Q4.end, "granularity": Granularity.QUARTER}

    groups_only = build(session, "vat", Filters(**quarter, owner=Owner.GROUP))
    readers_only = build(session, "vat", Filters(**quarter, owner=Owner.INDIVIDUAL))
    everyone = build(session, "vat", Filters(**quarter))

    assert [(r["country"], r["kind"], r["vat"]) for r in rows(groups_only)] == [
        ("DE", "sale", 1900)
    ]
    assert [(r["country"], r["kind"], r["vat"]) for r in rows(readers_only)] == [
        ("NL", "refund", -210),
        ("NL", "sale", 210),
    ]
    assert len(rows(everyone)) == 3
    assert any("unfiltered" in note for note in groups_only.notes)
    assert not any("unfiltered" in note for note in everyone.notes)


def test_the_owner_filter_splits_trials_by_whether_the_reader_has_held_a_group_seat_since(
    session: Session,
) -> None:
    from billing.models import GroupMembership, MembershipRole

    seated, removed, earlier, _alone = (
        factories.TrialFactory(started_at=at(10, day)) for day in (1, 2, 3, 4)
    )
    group = factories.GroupFactory()
    for trial, joined, left in (
        (seated, at(10, 10), None),
        (removed, at(10, 12), at(10, 20)),
        (earlier, at(9, 1), at(9, 30)),
    ):
        session.add(
            GroupMembership(
                group_id=group.id,
                reader_id=trial.reader_id,
                role=MembershipRole.MEMBER,
                joined_at=joined,
                removed_at=left,
            )
        )
    session.flush()
    october = {"start": date(2026, 10, 1), "end": date(2026, 10, 31)}

    groups_only = build(session, "trials", Filters(**october, owner=Owner.GROUP))
    readers_only = build(session, "trials", Filters(**october, owner=Owner.INDIVIDUAL))

    assert [(r["cohort"], r["started"]) for r in rows(groups_only)] == [("2026-10", 2)]
    assert [(r["cohort"], r["started"]) for r in rows(readers_only)] == [("2026-10", 2)]
    assert rows(build(session, "trials", Filters(**october)))[0]["started"] == 4


def test_the_owner_filter_keeps_the_dunning_list_to_groups_or_readers(session: Session) -> None:
    from billing.models import SubscriptionStatus

    monthly = history.plan(session)
    seats = history.plan(session, "group-seat-yearly", 9600, "year")
    person = history.customer(session, at(9, 1))
    company = history.customer(session, at(9, 1), group=True)
    for owner, plan in ((person, monthly), (company, seats)):
        sub = history.subscription(session, owner, plan, at(10, 1))
        sub.status = SubscriptionStatus.PAST_DUE
        sub.past_due_since = CLOCK_NOW - timedelta(days=2)
    session.flush()

    groups_only = build(session, "dunning", Filters(start=Q4.start, end=Q4.end, owner=Owner.GROUP))
    readers_only = build(
        session, "dunning", Filters(start=Q4.start, end=Q4.end, owner=Owner.INDIVIDUAL)
    )

    assert [r["plan"] for r in rows(groups_only)] == ["group-seat-yearly"]
    assert [r["plan"] for r in rows(readers_only)] == ["individual-monthly"]
