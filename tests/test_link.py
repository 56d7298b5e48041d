"""`qm link PROVIDER` end to end against the provider simulator: a human with an existing account at
`mail` links it through OAuth consent without buying anything (no charge at Stripe, no resource at
the provider), and a later purchase there reuses the link. Another human sees no such link and cannot
decide the consent; a human without an account is told there is nothing to link; agents cannot link."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from models.link import link_workflow_id
from models.money import Money
from quartermaster.cli import main_async as qm_main
from tests.fixtures.history_recorder import maybe_record
from tests.fixtures.stack import Stack, new_email


def _answer(out: str) -> dict[str, Any]:
    return dict(json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{"))))


async def _notified(stack: Stack, email: str, kind: str, contains: str) -> dict[str, Any]:
    for _ in range(300):
        found = [
            m for m in stack.inbox(email) if m.get("kind") == kind and contains in m.get("approval_id", "")
        ]
        if found:
            return dict(found[-1])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {kind} approval for {email}")


async def test_link_an_existing_account_without_buying(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    alice, bob = new_email(), new_email()
    await stack.seed_account("mail", alice)
    monkeypatch.setenv("QM_API_URL", stack.api_url)
    monkeypatch.setenv("QM_HUMAN_TOKEN", await stack.login_token(alice))
    before = await stack.provider_state("mail")

    assert await qm_main(["link", "mail", "--json"]) == 3  # waiting for alice's consent
    waiting = _answer(capsys.readouterr().out)
    assert waiting["error"]["code"] == "OAUTH_CONSENT_REQUIRED"
    assert waiting["error"]["stripe_projects_code"] == "PROVIDER_NOT_LINKED"
    consent = await _notified(stack, alice, "oauth_consent", "link-")
    assert "nothing is bought" in consent["summary"]

    # bob: no such link, and alice's consent is not his to decide
    async with await stack.login(bob) as other:
        with pytest.raises(Exception, match="NOT_FOUND"):
            await other.links.get("mail")
        with pytest.raises(Exception, match="NOT_FOUND"):
            await other.approvals.decide(consent["approval_id"], decision="deny", code=consent["code"])

    # alice consents at the provider (the simulator's consent page), and the link completes
    await stack.consent(consent["details"]["authorization_url"])
    for _ in range(100):
        code = await qm_main(["link", "mail", "--json"])
        if code != 3:
            break
        await asyncio.sleep(0.2)
    linked = _answer(capsys.readouterr().out)
    assert code == 0 and linked["state"] == "completed" and linked["link_action"] == "linked_existing", linked
    await maybe_record(
        stack.client, link_workflow_id(stack.principal_id(alice), "mail"), "link-existing-account"
    )
    # nothing was bought: no new charge and no new resource in the provider's books
    after = await stack.provider_state("mail")
    assert after["resources"] == before["resources"] and after["charges"] == before["charges"]
    # again: already linked, answered at once
    assert await qm_main(["link", "mail", "--json"]) == 0
    assert _answer(capsys.readouterr().out)["already_linked"] is True

    # a purchase at mail reuses the link: no OAuth consent and no terms are asked
    async with await stack.login(alice) as human:
        view = await human.provisions.create(service_id="mail/send:starter", name="mailer", wait=20)
        kinds = [w.kind for w in view.waiting_for]
        assert "oauth_consent" not in kinds and "terms" not in kinds, view
        assert view.link_action in (None, "linked_existing"), view


async def test_nothing_to_link_and_agents_cannot_link(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    email = new_email()  # no account at cloud
    monkeypatch.setenv("QM_API_URL", stack.api_url)
    monkeypatch.setenv("QM_HUMAN_TOKEN", await stack.login_token(email))
    code = await qm_main(["link", "cloud", "--wait", "20", "--json"])
    answer = _answer(capsys.readouterr().out)
    assert code == 2 and answer["error"]["code"] == "NOT_FOUND", answer
    assert "qm provision creates one" in answer["error"]["message"]
    assert await qm_main(["link", "nope", "--json"]) == 2  # UNKNOWN_PROVIDER
    assert _answer(capsys.readouterr().out)["error"]["code"] == "UNKNOWN_PROVIDER"
    async with await stack.login(email) as human:
        sid = await stack.open_session(
            human, email, "planner", allowed_services=["cloud/*"], budget=Money(amount=100, currency="usd")
        )
        async with await stack.agent(human, "planner", sid) as agent:
            with pytest.raises(Exception, match=r"FORBIDDEN|UNAUTHENTICATED"):
                await agent.links.start("cloud")
