"""No standing privileges: revoking the root of a 3-level tree closes every descendant session and
revokes every provider credential minted under the tree, at the live provider simulators."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

import httpx
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer

from models.errors import ErrorCode
from models.money import Money
from models.provider import Credential, TermsAcceptance
from models.request import Actor
from models.secret import Secret
from models.session import (
    Authorization,
    AuthorizationRequest,
    DelegationRequest,
    RecordCredential,
)
from simulators.provider.catalogs import CATALOGS
from tests.fixtures.providers import ProviderSims
from tests.fixtures.sessions import IdentityStack, audit_actions
from workflows.session import SessionWorkflow

FREE = {"cloud": "cloud/workers", "db": "db/postgres:free"}


async def _account(
    stack: IdentityStack, sims: ProviderSims, provider: str, email: str, principal_id: str
) -> Secret:
    adapter = stack.registry.get(provider)
    account = await adapter.create_account(
        assertion=sims.signer.sign(subject=f"cus_{secrets.token_hex(4)}", email=email, audience=provider),
        terms=TermsAcceptance(
            terms_version=CATALOGS[provider].provider.terms_version,
            accepted_at=datetime.now(UTC),
            accepted_by=principal_id,
            approval_id="test",
        ),
        idempotency_key=f"acct-{secrets.token_hex(6)}",
    )
    stack.accounts.credentials[(provider, principal_id)] = account.credential
    return account.credential


async def _mint(stack: IdentityStack, provider: str, account: Secret, ttl: int) -> Credential:
    adapter = stack.registry.get(provider)
    resource = await adapter.create_resource(
        account=account,
        service_id=FREE[provider],
        name=f"r{secrets.token_hex(3)}",
        configuration={},
        payment_token=None,
        idempotency_key=f"res-{secrets.token_hex(6)}",
    )
    return await adapter.mint_credential(
        account=account, resource_id=resource.resource_id, scopes=[], ttl_seconds=ttl,
        idempotency_key=f"cred-{secrets.token_hex(6)}",
    )  # fmt: skip


async def _introspect(sims: ProviderSims, provider: str, token: Secret) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(
            f"{sims.urls[provider]}/introspect", data={"token": token.reveal()}, auth=sims.auth(provider)
        )
        resp.raise_for_status()
        body: dict[str, object] = resp.json()
        return body


async def _authorize(stack: IdentityStack, email: str, agent: str, token: Secret) -> Authorization:
    req = AuthorizationRequest(
        actor=Actor(
            principal_email=email, agent=agent, session_token=token, identity_token=stack.identity(agent)
        ),
        service_id="cloud/workers",
    )
    result: Authorization = await ActivityEnvironment().run(stack.sessions.authorize_actor, req)
    return result


async def test_revoking_the_root_revokes_the_whole_tree(
    identity_stack: IdentityStack, provider_sims: ProviderSims
) -> None:
    stack, sims = identity_stack, provider_sims
    email = f"tree-{secrets.token_hex(4)}@example.com"
    root, root_token = await stack.open_root("planner", email=email, allow=["cloud/*", "db/*"], max_depth=2)
    pid = root.principal_id
    accounts = {p: await _account(stack, sims, p, email, pid) for p in FREE}

    # planner -> coder (depth 1) -> tester (depth 2), and planner -> writer (depth 1)
    coder = await stack.qm.delegate(
        DelegationRequest(
            session_token=root_token, identity_token=stack.identity("planner"), to_agent="coder"
        )
    )
    writer = await stack.qm.delegate(
        DelegationRequest(
            session_token=root_token, identity_token=stack.identity("planner"), to_agent="writer",
            allowed_services=["cloud/workers"], budget=Money(amount=100),
        )
    )  # fmt: skip
    tester = await stack.qm.delegate(
        DelegationRequest(
            session_token=coder.session_token, identity_token=stack.identity("coder"), to_agent="tester"
        )
    )
    assert tester.chain == ["planner", "coder", "tester"] and tester.depth == 2
    tree = {
        "planner": (root.session_id, root_token),
        "coder": (coder.session_id, coder.session_token),
        "writer": (writer.session_id, writer.session_token),
        "tester": (tester.session_id, tester.session_token),
    }

    # every session may act, and mints credentials (TTL capped by its remaining life) at both providers
    minted: list[tuple[str, Credential]] = []
    for agent, (sid, token) in tree.items():
        auth = await _authorize(stack, email, agent, token)
        assert auth.allowed and auth.session_ids[-1] == sid, auth
        assert auth.max_credential_ttl_seconds is not None
        for provider, account in accounts.items():
            cred = await _mint(stack, provider, account, min(auth.max_credential_ttl_seconds, 3600))
            await ActivityEnvironment().run(
                stack.sessions.record_credential,
                RecordCredential(
                    session_id=sid, provider=provider, credential_id=cred.credential_id, account_ref=pid,
                    expires_at=cred.expires_at,
                ),
            )  # fmt: skip
            minted.append((provider, cred))
    for provider, cred in minted:
        assert (await _introspect(sims, provider, cred.token))["active"] is True

    started = time.perf_counter()
    summary = await stack.qm.revoke(root.session_id, by=pid, reason="task finished")
    elapsed = time.perf_counter() - started
    print(
        f"\nrevoked a 3-level tree of {len(tree)} sessions and {len(minted)} provider credentials "
        f"in {elapsed * 1000:.0f} ms"
    )
    assert summary.status == "revoked" and summary.descendants_closed == 3
    # the whole tree's credentials: the root's 2 and its descendants' 6 (what `qm session revoke` prints)
    assert summary.credentials_revoked == len(minted) == 8 and summary.credential_failures == 0

    for agent, (sid, token) in tree.items():
        auth = await _authorize(stack, email, agent, token)
        assert (auth.allowed, auth.code) == (False, ErrorCode.SESSION_REVOKED), (agent, auth)
        state = await stack.qm.show(sid)
        assert state.status == "revoked"
        assert all(c.revoked for c in state.credentials) and len(state.credentials) == 2
        assert "session.revoked" in audit_actions(stack, sid)
    for provider, cred in minted:
        assert await _introspect(sims, provider, cred.token) == {"active": False}, (
            provider,
            cred.credential_id,
        )

    # a credential minted under the tree after the revocation is revoked on the spot, never kept
    late = await _mint(stack, "cloud", accounts["cloud"], 600)
    try:
        await ActivityEnvironment().run(
            stack.sessions.record_credential,
            RecordCredential(session_id=tester.session_id, provider="cloud", credential_id=late.credential_id,
                             account_ref=pid, expires_at=late.expires_at),
        )  # fmt: skip
        raise AssertionError("recording under a revoked session must fail")
    except Exception as exc:
        assert ErrorCode.SESSION_REVOKED in repr(exc) or "no longer active" in str(exc)
    assert await _introspect(sims, "cloud", late.token) == {"active": False}

    # the histories of the root and a delegated session replay with the current code
    replayer = Replayer(workflows=[SessionWorkflow], data_converter=stack.client.data_converter)
    for sid in (root.session_id, tester.session_id):
        history = await stack.client.get_workflow_handle(f"session-{sid}").fetch_history()
        await replayer.replay_workflow(history)
