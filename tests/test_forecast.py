"""The forecast of committed renewals: the projection itself, then through the API, the SDK, the CLI,
a quote and an approval's facts against a real stack (a purchase renews, a future month fills up)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from models.forecast import Commitment, forecast_months, project, quote_effect
from models.ledger import month_of, monthly_ledger_id
from models.money import Money
from models.renewal import add_months
from quartermaster.api.approval_facts import approval_facts
from quartermaster.api.page_templates import approval_page
from quartermaster.cli import main_async as qm_main
from tests.fixtures.stack import Stack, new_email
from tests.test_renewals import fill_ledger, provision

JAN_31 = datetime(2027, 1, 31, 9, 0, tzinfo=UTC)


def test_monthly_and_yearly_commitments_fall_in_their_months() -> None:
    months = forecast_months(JAN_31, 13)
    assert months[0] == "2027-01" and months[-1] == "2028-01"
    monthly = Commitment(
        provider="cloud", service_id="cloud/r2", price=Money.usd(5), interval="month", anchor=JAN_31
    )
    yearly = Commitment(provider="cloud", service_id="cloud/registrar:domain", price=Money(amount=1099),
                        interval="year", anchor=JAN_31)  # fmt: skip
    f = project(
        "p1", months, [monthly, yearly], {"cloud": Money.usd(100)}, {("cloud", "2027-01"): Money.usd(16)}
    )
    by_month = {r.month: r for r in f.rows}
    assert by_month["2027-01"].in_ledger == Money.usd(16) and by_month["2027-01"].renewals.amount == 0
    assert by_month["2027-02"].renewals.amount == 500  # due 28 February: the day clamped to the month
    assert add_months(JAN_31, 1).day == 28
    assert all(by_month[m].renewals.amount == 500 for m in months[1:12])
    assert by_month["2028-01"].renewals.amount == 500 + 1099
    assert f.over_limit == []


def test_a_purchase_that_would_push_a_future_month_over_the_cap_is_flagged() -> None:
    months = forecast_months(JAN_31, 12)
    full = {("cloud", "2027-03"): Money(amount=9_800)}
    base = project("p1", months, [], {"cloud": Money.usd(100)}, full)
    purchase = Commitment(provider="cloud", service_id="cloud/r2", price=Money.usd(5), interval="month",
                          anchor=JAN_31)  # fmt: skip
    effect = quote_effect(base, purchase, Money.usd(5), Money.usd(100))
    assert effect.over_limit_months == ["2027-03"]
    (march,) = [m for m in effect.months if m.month == "2027-03"]
    assert march.total.amount == 10_300 and march.over_limit
    # just below the edge: USD 95 already there plus USD 5 is exactly the cap, not over it
    base = project("p1", months, [], {"cloud": Money.usd(100)}, {("cloud", "2027-03"): Money(amount=9_500)})
    assert quote_effect(base, purchase, Money.usd(5), Money.usd(100)).over_limit_months == []


async def test_forecast_quote_cli_and_approval_show_committed_renewals(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    email = new_email()
    bought = await provision(stack, email, "cloud/r2")
    assert bought.resource_id
    now = datetime.now(UTC)
    this, nxt = month_of(now), month_of(add_months(now, 1))
    human = await stack.login(email)
    async with human:
        forecast = await human.billing.forecast(12)
        cloud = {r.month: r for r in forecast.rows if r.provider == "cloud"}
        assert cloud[this].in_ledger.amount == 500  # the purchase itself
        assert [cloud[m].renewals.amount for m in forecast.months[1:]] == [500] * 11
        assert forecast.over_limit == []

        # another purchase already fills next month at this provider: the renewal would push it over
        pid = stack.principal_id(email)
        await fill_ledger(stack, monthly_ledger_id(pid, "cloud", add_months(now, 1)), 9_800)
        forecast = await human.billing.forecast(3)
        assert forecast.over_limit == [f"cloud:{nxt}"]

        quote = await human.quotes.create("cloud/r2")
        assert quote.forecast is not None and quote.forecast.over_limit_months == [nxt]
        async with stack.anonymous() as anon:
            assert (await anon.quotes.create("cloud/r2")).forecast is None  # nobody to forecast for

    # the CLI shows the same, for the human who runs it
    monkeypatch.setenv("QM_API_URL", stack.api_url)
    monkeypatch.setenv("QM_HUMAN_TOKEN", await stack.login_token(email))
    capsys.readouterr()
    assert await qm_main(["billing", "show", "--months", "3"]) == 0
    out = capsys.readouterr().out
    assert "committed future charges" in out and "OVER" in out and nxt in out
    assert await qm_main(["billing", "show", "--json"]) == 0
    line = next(x for x in reversed(capsys.readouterr().out.splitlines()) if x.startswith("{"))
    assert json.loads(line)["forecast"]["over_limit"] == [f"cloud:{nxt}"]
    assert await qm_main(["quote", "cloud/r2"]) == 0
    assert f"exceed the monthly limit in {nxt}" in capsys.readouterr().out

    # a purchase now waits for an approval: its facts (and the page) show the month it would overflow
    await fill_ledger(stack, monthly_ledger_id(pid, "cloud", now), 9_400)
    req = stack.request("cloud/r2", email)
    await stack.qm.submit(req)
    ask = await stack.wait_for_approval(req.request_id, "spend_limit")
    (approval,) = [a for a in await stack.qm.approvals(email=email) if a.approval_id == ask["approval_id"]]
    facts = await approval_facts(stack.api, approval, email)
    assert facts.forecast is not None and nxt in facts.forecast.over_limit_months
    page = approval_page(facts, view_hash="x", csrf="y", needs_code=True, who=email, action="/z")
    assert 'id="forecast-over"' in page and nxt in page
    await stack.decide(ask["approval_id"], email, "deny", reason="no")
