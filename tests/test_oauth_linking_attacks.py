"""OAuth account linking under attack: consent with someone else's account, forged callbacks, and the
authorization URL kept away from the agent."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from activities.accounts import AccountActivities
from models.provisioning import ProvisionResult
from providers.audit.store import AuditFilters
from providers.store import open_store
from quartermaster.codec import SecretBox
from quartermaster.orchestration.requests import Waiting
from tests.fixtures.stack import Stack, new_email
from tests.test_provision_e2e import result_of


def _with_login_hint(url: str, email: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["login_hint"] = email
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _connection(stack: Stack, email: str, provider: str) -> object:
    store = open_store(stack.settings.resolved_database_url, sealer=SecretBox(stack.keyring))
    return await store.connections.get_connection(principal_id=stack.principal_id(email), provider=provider)


def _audited(stack: Stack, workflow_id: str, action: str) -> list[object]:
    store = open_store(stack.settings.resolved_database_url)
    return list(store.audit.query(AuditFilters(workflow_id=workflow_id, action=action)))


async def _attacker_consents(stack: Stack) -> list[dict[str, object]]:
    """Whoever opens the URL changes `login_hint` and consents as themselves: the code exchange
    returns their account, whose verified email is not the principal's, so nothing is linked. The
    attacker's OAuth tokens still active at the provider afterwards."""
    victim, attacker = new_email(), new_email()
    await stack.seed_account("db", victim)
    await stack.seed_account("db", attacker)
    req = stack.request("db/postgres:free", victim)
    await stack.qm.submit(req)
    consent = await stack.wait_for_approval(req.request_id, "oauth_consent")
    await stack.consent(_with_login_hint(consent["details"]["authorization_url"], attacker))
    res = await result_of(stack, req.request_id)
    assert (res.outcome, res.error_code) == ("rejected", "ACCOUNT_IDENTITY_MISMATCH"), res
    assert res.link_action is None and res.resource_id is None
    assert await _connection(stack, victim, "db") is None
    for _ in range(50):
        if _audited(stack, f"provision-{req.request_id}", "account.link_refused"):
            break
        await asyncio.sleep(0.1)
    assert _audited(stack, f"provision-{req.request_id}", "account.link_refused")
    state = await stack.provider_state("db")
    [account_id] = [a["account_id"] for a in state["accounts"] if a["email"] == attacker]
    oauth = [
        t for t in state["tokens"] if t["account_id"] == account_id and t["kind"] in ("access", "refresh")
    ]
    assert {t["kind"] for t in oauth} == {"access", "refresh"}  # the exchange did issue a pair
    return [t for t in oauth if t["revoked_at"] is None]


async def test_consent_with_another_account_links_nothing(stack: Stack) -> None:
    """... and the tokens issued for the wrong account are revoked at once (RFC 7009)."""
    assert await _attacker_consents(stack) == []


async def test_a_client_that_keeps_the_wrong_accounts_tokens_is_caught(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def keep(self: AccountActivities, provider: str, account: object) -> None:
        return None

    monkeypatch.setattr(AccountActivities, "_discard", keep)
    assert len(await _attacker_consents(stack)) == 2


async def test_forged_callback_is_ignored_and_the_human_still_links(stack: Stack) -> None:
    """A callback with the right request but a wrong nonce used to win (first callback wins) and
    block the human's real consent until the timeout."""
    email = new_email()
    await stack.seed_account("db", email)
    req = stack.request("db/postgres:free", email)
    await stack.qm.submit(req)
    consent = await stack.wait_for_approval(req.request_id, "oauth_consent")
    wid = f"provision-{req.request_id}"
    async with httpx.AsyncClient() as http:
        forged = {"state": f"{wid}.oauth_consent.forged-nonce", "code": "attacker-code"}
        r = await http.get(f"{stack.gateway_url}/oauth/callback", params=forged)
        assert r.status_code < 500
    await stack.consent(consent["details"]["authorization_url"])
    res: ProvisionResult = await result_of(stack, req.request_id, timeout=30)
    assert (res.outcome, res.link_action) == ("completed", "linked_existing"), res
    for _ in range(50):
        if _audited(stack, wid, "oauth.callback_ignored"):
            break
        await asyncio.sleep(0.1)
    (ignored,) = _audited(stack, wid, "oauth.callback_ignored")
    assert ignored.event.reason == "state_mismatch"  # type: ignore[attr-defined]


async def test_authorization_url_goes_to_the_human_only(stack: Stack) -> None:
    email = new_email()
    await stack.seed_account("db", email)
    req = stack.request("db/postgres:free", email)
    await stack.qm.submit(req)
    consent = await stack.wait_for_approval(req.request_id, "oauth_consent")
    url = consent["details"]["authorization_url"]
    assert consent["human_only"] == ["authorization_url"]
    # what an agent reads: the status query and the waiting result built on it
    status = await stack.client.get_workflow_handle(f"provision-{req.request_id}").query("status")
    assert url not in str(status)
    waiting = await stack.qm.status(req.request_id)
    assert isinstance(waiting, Waiting) and waiting.approvals[0].kind == "oauth_consent"
    assert "authorization_url" not in waiting.approvals[0].details
    assert url not in waiting.model_dump_json()
    # the human's channel has it
    assert any(m.get("details", {}).get("authorization_url") == url for m in stack.inbox(email))
    await stack.consent(url, approve=False)
    res = await result_of(stack, req.request_id)
    assert url not in res.model_dump_json()
