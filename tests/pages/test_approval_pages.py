"""The approval pages in real Chromium (Debian's, driven by Playwright): each kind's page says who asks,
what, how much and the effect on the cap; approving completes the request, denying undoes it; replayed
links, links for another approval or human, tampered forms and approvals that changed after the page
was shown are refused. Screenshots go to docs/screenshots/ for the README."""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, Response, async_playwright

from models.money import Money
from quartermaster.client import QuartermasterClient
from tests.fixtures.stack import Stack, new_email

pytestmark = pytest.mark.browser
#: QM_SCREENSHOTS=1 refreshes the committed screenshots; otherwise they go to a scratch directory
SHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("QM_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "qm-screenshots"
)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS, headless=True)
        yield b
        await b.close()


@pytest.fixture
async def ctx(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(viewport={"width": 1000, "height": 900})
    yield context
    await context.close()


async def message_for(
    stack: Stack, email: str, kind: str, contains: str = "", timeout: float = 30
) -> dict[str, Any]:
    """The newest approval notification of `kind` (whose id contains `contains`) in the dev inbox."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [
            m
            for m in stack.inbox(email)
            if m.get("type") == "approval_request" and m["kind"] == kind and contains in m["approval_id"]
        ]
        if found:
            return found[-1]
        assert asyncio.get_running_loop().time() < deadline, f"no {kind} notification for {email}"
        await asyncio.sleep(0.1)


async def open_link(page: Page, link: str, shot: str | None = None) -> str:
    resp = await page.goto(link)
    assert resp is not None and resp.status == 200, (resp.status if resp else None, await page.content())
    assert "?t=" not in page.url  # the token left the address bar
    if shot:
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
    return await page.inner_text("body")


async def press(page: Page, button: str, shot: str | None = None) -> tuple[int, str]:
    async with page.expect_navigation() as nav:
        await page.click(f"#{button}")
    resp: Response = await nav.value
    if shot:
        await page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
    return resp.status, await page.inner_text("body")


async def provision_state(human: QuartermasterClient, request_id: str, timeout: float = 30) -> Any:
    view = await human.provisions.wait(request_id, timeout=timeout)
    return view


async def test_domain_under_a_session_through_every_page(stack: Stack, ctx: BrowserContext) -> None:
    """session_open, terms, payment_method (then Checkout), purchase, information: all in the browser."""
    email = new_email()
    domain = f"qm-{secrets.token_hex(3)}.dev"
    page = await ctx.new_page()
    async with await stack.login(email) as human:
        state = await human.sessions.open(
            agent="planner", allowed_services=["cloud/*"], budget=Money(amount=5000, currency="usd")
        )
        msg = await message_for(stack, email, "session_open", state.session_id)
        text = await open_link(page, msg["link"], "session_open")
        assert "Open a session for an agent" in text and "planner" in text and "50.00 USD" in text
        assert "cloud/*" in text
        status, text = await press(page, "approve")
        assert status == 200 and "Approved" in text and "becomes active" in text
        for _ in range(100):
            if (await human.sessions.get(state.session_id)).status == "active":
                break
            await asyncio.sleep(0.05)
        async with await stack.agent(human, "planner", state.session_id) as agent:
            view = await agent.provisions.create(
                service_id="cloud/registrar:domain", name="site", configuration={"domain": domain}
            )
            rid = view.request_id
            # terms
            msg = await message_for(stack, email, "terms", rid)
            text = await open_link(page, msg["link"], "terms")
            for fact in (domain, "cloud/registrar:domain", "planner", state.session_id, "2026-04-01",
                         "10.99 USD", "per year", "dns:read", rid, "0.00 USD of 100.00 USD"):  # fmt: skip
                assert fact in text, (fact, text)
            assert await page.get_attribute("a[href='https://cloud.example/terms']", "href")
            status, text = await press(page, "approve")
            assert status == 200 and "Approved" in text
            # payment method: approving leads to the Checkout page
            msg = await message_for(stack, email, "payment_method", rid)
            text = await open_link(page, msg["link"], "payment_method")
            assert "Add a payment method" in text and "10.99 USD" in text
            status, text = await press(page, "approve", "payment_method-next")
            checkout = await page.get_attribute("#next-link", "href")
            assert checkout and checkout == msg["details"]["checkout_url"]
            await stack.attach_card(checkout)
            # the irreversible purchase: amount, domain, chain, cap effect
            msg = await message_for(stack, email, "purchase", rid)
            assert domain in msg["summary"], msg["summary"]  # the code flow's one line names it too
            text = await open_link(page, msg["link"], "purchase")
            assert "Approve an irreversible purchase" in text and domain in text
            assert "no: this is final" in text and "planner" in text
            assert (await page.inner_text("#due-now")) == "10.99 USD"
            assert (await page.inner_text("#cap-effect")) == "10.99 USD of 100.00 USD"
            assert "remaining 50.00 USD" in text
            status, text = await press(page, "approve")
            assert status == 200 and "cannot be undone" in text
            # the information the provider asks for: a form from needs_information_schema
            msg = await message_for(stack, email, "information", rid)
            text = await open_link(page, msg["link"])
            assert "Information the provider needs" in text
            await page.fill("[name='info.registrant_contact.name']", "Alice Example")
            await page.fill("[name='info.registrant_contact.email']", "alice@example.com")
            await page.fill("[name='info.registrant_contact.country']", "DE")
            await page.screenshot(path=str(SHOTS / "information.png"), full_page=True)
            status, text = await press(page, "approve", "result")
            assert status == 200 and "Approved" in text
            done = await agent.provisions.wait(rid, timeout=40)
            assert done.state == "completed", done
    rows = await stack.provider_state("cloud")
    assert domain in str(rows) and "Alice Example" in str(rows)


async def test_deny_undoes_and_replays_are_refused(stack: Stack, ctx: BrowserContext) -> None:
    email = new_email()
    page = await ctx.new_page()
    async with await stack.login(email) as human:
        a = await human.provisions.create(service_id="cloud/r2", name="bucket-a")
        b = await human.provisions.create(service_id="cloud/r2", name="bucket-b")
        ma = await message_for(stack, email, "terms", a.request_id)
        mb = await message_for(stack, email, "terms", b.request_id)
        # a link for another approval: A's token on B's page
        token_a = ma["link"].split("?t=", 1)[1]
        path_b = urlsplit(mb["link"]).path
        resp = await page.goto(f"{stack.api_url}{path_b}?t={token_a}")
        assert resp is not None and resp.status == 401
        assert await page.inner_text("#error-code") == "LINK_INVALID"
        # a forged token
        resp = await page.goto(f"{stack.api_url}{path_b}?t=AAAA{token_a[4:]}")
        assert resp is not None and resp.status == 401
        # deny A through its page
        text = await open_link(page, ma["link"])
        assert "5.00 USD" in text and "per month" in text
        await page.fill("#reason", "not this one")
        status, text = await press(page, "deny", "denied")
        assert status == 200 and "Denied" in text and "undone" in text
        view = await human.provisions.wait(a.request_id, timeout=30)
        assert view.state in ("rejected", "undone"), view
        assert view.error is not None and view.error["code"] == "APPROVAL_DENIED"
        # the link again (replayed): refused, and so is deciding twice
        resp = await page.goto(ma["link"])
        assert resp is not None and resp.status == 401
        assert "already used" in await page.inner_text("#error-message")
        # a tampered hidden field on B's page: the hash of what was shown
        await open_link(page, mb["link"])
        await page.evaluate("document.querySelector('[name=view_hash]').value = '0'.repeat(64)")
        status, text = await press(page, "approve")
        assert status == 409 and "APPROVAL_CHANGED" in text
        await page.go_back()
        await page.evaluate("document.querySelector('[name=csrf]').value = 'f'.repeat(64)")
        status, text = await press(page, "approve")
        assert status == 403 and "CSRF_INVALID" in text
        # a cross-site POST (no page, no token) is refused too
        async with httpx.AsyncClient(base_url=stack.api_url) as http:
            r = await http.post(path_b, data={"decision": "approve"})
            assert r.status_code == 401
        # the untampered form still works, once
        await page.go_back()
        await page.reload()
        status, text = await press(page, "approve")
        assert status == 200 and "Approved" in text
        await message_for(stack, email, "payment_method", b.request_id)  # the terms are accepted: next gate


async def test_another_human_and_a_change_after_the_page_was_shown(stack: Stack, ctx: BrowserContext) -> None:
    alice, bob = new_email(), new_email()
    page = await ctx.new_page()
    async with await stack.login(alice) as human:
        pending = await human.billing.set_limit(Money(amount=30_000, currency="usd"))
        msg = await message_for(stack, alice, "limit_change", pending.approval_id)
        text = await open_link(page, msg["link"], "limit_change")
        assert "Change a monthly spending limit" in text and "300.00 USD" in text
        assert await page.inner_text("#cap-effect") == "100.00 USD → 300.00 USD"
        # meanwhile another change is approved with the code flow: the page shows a stale "before"
        other = await human.billing.set_limit(Money(amount=20_000, currency="usd"))
        await message_for(stack, alice, "limit_change", other.approval_id)
        seen = await human.approvals.get(other.approval_id)
        assert seen.view_hash
        await human.approvals.decide(
            other.approval_id, decision="approve", code=stack.code_for(other.approval_id, alice),
            view_hash=seen.view_hash,
        )  # fmt: skip
        for _ in range(100):
            if (await human.billing.show()).limits.global_limit == Money(amount=20_000, currency="usd"):
                break
            await asyncio.sleep(0.05)
        status, text = await press(page, "approve", "changed")
        assert status == 409 and "APPROVAL_CHANGED" in text
        # the JSON route refuses a stale hash the same way
        first = await human.approvals.get(pending.approval_id)
        with pytest.raises(Exception) as err:
            await human.approvals.decide(
                pending.approval_id, decision="approve", code=stack.code_for(pending.approval_id, alice),
                view_hash="0" * 64,
            )  # fmt: skip
        assert "APPROVAL_CHANGED" in str(err.value)
        assert first.view_hash and first.view_hash != seen.view_hash
    # Bob logs in on the login page; Alice's approval does not exist for him
    assert ctx.browser is not None
    bob_ctx = await ctx.browser.new_context()
    bob_page = await bob_ctx.new_page()
    await bob_page.goto(f"{stack.api_url}/login")
    await bob_page.fill("#email", bob)
    async with bob_page.expect_navigation():
        await bob_page.click("#send")
    code = [m["code"] for m in stack.inbox(bob) if m.get("type") == "login_code"][-1]
    await bob_page.fill("#code", code)
    async with bob_page.expect_navigation():
        await bob_page.click("#verify")
    assert "Nothing waits for you" in await bob_page.inner_text("body")
    await bob_page.screenshot(path=str(SHOTS / "approvals-list.png"), full_page=True)
    resp = await bob_page.goto(f"{stack.api_url}{urlsplit(msg['link']).path}")
    assert resp is not None and resp.status == 404
    # and Alice's link, followed by Bob's browser after Alice used it, is refused as replayed
    resp = await bob_page.goto(msg["link"])
    assert resp is not None and resp.status == 401
    await bob_ctx.close()


async def test_oauth_and_unfreeze_pages(stack: Stack, ctx: BrowserContext) -> None:
    email = new_email()
    page = await ctx.new_page()
    await stack.seed_account("mail", email)
    async with await stack.login(email) as human:
        view = await human.provisions.create(service_id="mail/send:starter", name="mailer")
        msg = await message_for(stack, email, "oauth_consent", view.request_id)
        text = await open_link(page, msg["link"], "oauth_consent")
        assert "Link your existing account" in text and "mail/send:starter" in text and "15.00 USD" in text
        status, text = await press(page, "approve")
        target = await page.get_attribute("#next-link", "href")
        assert status == 200 and target == msg["details"]["authorization_url"]
        await stack.consent(target)
        sid = await stack.open_session(human, email, "runaway", allowed_services=["cloud/*"])
        assert sid
        await human.agents.freeze("runaway")
        status_ = await human.agents.unfreeze("runaway")
        assert status_.unfreeze_approval_id
        msg = await message_for(stack, email, "agent_unfreeze", "runaway")
        text = await open_link(page, msg["link"], "agent_unfreeze")
        assert "Unfreeze an agent" in text and "runaway" in text
        status, text = await press(page, "approve")
        assert status == 200 and "act again" in text


async def test_spend_limit_page_shows_the_cap_before_and_after(stack: Stack, ctx: BrowserContext) -> None:
    """Over this month's cap: the page names the amount, the limit and the cap before and after;
    approving completes the purchase (charged), denying the next one undoes it (nothing charged)."""
    from tests.test_provision_gate_timeouts import _lower_cap

    email = new_email()
    page = await ctx.new_page()
    await _lower_cap(stack, stack.settings.task_queue, email)  # cloud's cap at USD 1 for this principal
    async with await stack.login(email) as human:
        first = await human.provisions.create(service_id="cloud/r2", name="over-1")
        terms = await message_for(stack, email, "terms", first.request_id)
        await human.approvals.decide(terms["approval_id"], decision="approve", code=terms["code"])
        pm = await message_for(stack, email, "payment_method", first.request_id)
        await stack.attach_card(pm["details"]["checkout_url"])
        msg = await message_for(stack, email, "spend_limit", first.request_id)
        text = await open_link(page, msg["link"], "spend_limit")
        assert "Spend over this month's limit" in text and "cloud/r2" in text and first.request_id in text
        assert "This purchase\t5.00 USD" in text and "Limit\t1.00 USD" in text, text
        assert "Spent so far\t0.00 USD of 1.00 USD" in text  # the cap before
        assert await page.inner_text("#cap-effect") == "5.00 USD of 1.00 USD"  # and after
        assert "This goes over the monthly limit." in text
        status, text = await press(page, "approve")
        assert status == 200 and "Approved" in text and "may go over the limit" in text
        done = await human.provisions.wait(first.request_id, timeout=40)
        assert done.state == "completed" and done.charge == Money(amount=500, currency="usd"), done

        second = await human.provisions.create(service_id="cloud/r2", name="over-2")
        msg = await message_for(stack, email, "spend_limit", second.request_id)
        text = await open_link(page, msg["link"])
        assert "Spent so far\t5.00 USD of 1.00 USD" in text, text  # the first purchase counts now
        assert await page.inner_text("#cap-effect") == "10.00 USD of 1.00 USD"
        await page.fill("#reason", "enough for this month")
        status, text = await press(page, "deny")
        assert status == 200 and "Denied" in text
        view = await human.provisions.wait(second.request_id, timeout=40)
        assert view.state in ("rejected", "undone") and view.error is not None, view
        assert view.error["code"] == "APPROVAL_DENIED"
        spend = await human.billing.show()
    cloud = next(p for p in spend.providers if p.provider == "cloud")
    assert cloud.ledger.committed == Money(amount=500, currency="usd")  # only the approved one
    assert cloud.ledger.reserved == Money(amount=0, currency="usd")
    names = [r["name"] for r in (await stack.provider_state("cloud"))["resources"]]
    assert "over-1" in names and "over-2" not in names
