"""Enforcement: a session token is refused with a clear code, and nothing happens, when it is presented
with another agent's identity, after it expired, after tampering, or by a frozen agent."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.testing import ActivityEnvironment

from models.errors import ErrorCode, QuartermasterError
from models.money import Money
from models.request import Actor
from models.secret import Secret
from models.session import (
    Authorization,
    AuthorizationRequest,
    DelegationRequest,
    SessionState,
    SessionTokenRequest,
)
from quartermaster.crypto.authority import sign_human_actor
from quartermaster.identity.keys import SigningKeys
from quartermaster.identity.tokens import SessionTokens
from tests.fixtures.sessions import IdentityStack, audit_actions

EMAIL = "refusals@example.com"


async def authorize(
    stack: IdentityStack,
    agent: str,
    session: Secret | None,
    identity: Secret | None,
    service: str = "cloud/workers",
    amount: Money | None = None,
    email: str = EMAIL,
) -> Authorization:
    req = AuthorizationRequest(
        actor=Actor(principal_email=email, agent=agent, session_token=session, identity_token=identity),
        service_id=service,
        amount=amount,
    )
    result: Authorization = await ActivityEnvironment().run(stack.sessions.authorize_actor, req)
    return result


def _tamper(token: Secret, **changes: object) -> Secret:
    head, body, sig = token.reveal().split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return Secret(f"{head}.{forged}.{sig}")


def _expired_token(stack: IdentityStack, state: SessionState) -> Secret:
    """A correctly signed token for this very session whose `exp` has passed."""
    return stack.tokens.issue(
        SessionTokenRequest(
            session_id=state.session_id,
            principal_id=state.principal_id,
            agent_identity=state.agent_identity,
            allowed_services=state.grant.allowed_services,
            expires_at=datetime.now(UTC) - timedelta(seconds=5),
            issued_at=datetime.now(UTC) - timedelta(minutes=10),
            chain_identities=state.chain_identities,
        )
    )


async def test_valid_session_is_allowed_with_its_limits(identity_stack: IdentityStack) -> None:
    state, token = await identity_stack.open_root("builder-ok", email=EMAIL, budget_minor=2000)
    auth = await authorize(identity_stack, "builder-ok", token, identity_stack.identity("builder-ok"))
    assert auth.allowed, auth
    assert auth.agent_chain == ["builder-ok"] and auth.session_ids == [state.session_id]
    assert auth.budget_layers == [
        {
            "ledger_id": f"budget-session-{state.session_id}",
            "limit": {"amount": 2000, "currency": "usd"},
            "kind": "budget",
        }
    ]
    assert auth.max_credential_ttl_seconds is not None and 3500 < auth.max_credential_ttl_seconds <= 3600
    assert "session.opened" in audit_actions(identity_stack, state.session_id)


async def test_refusals_each_with_a_clear_code(identity_stack: IdentityStack) -> None:
    stack = identity_stack
    state, token = await stack.open_root("builder-a", email=EMAIL, allow=["cloud/*"], budget_minor=1000)
    mine = stack.identity("builder-a")

    cases: dict[str, Authorization] = {
        # someone else's identity with my session token (either actor name)
        "other identity": await authorize(stack, "intruder", token, stack.identity("intruder")),
        "other identity, my name": await authorize(stack, "builder-a", token, stack.identity("intruder")),
        "no identity": await authorize(stack, "builder-a", token, None),
        "expired": await authorize(stack, "builder-a", _expired_token(stack, state), mine),
        "tampered services": await authorize(stack, "builder-a", _tamper(token, services=["*"]), mine),
        "tampered binding": await authorize(
            stack, "intruder", _tamper(token, act={"sub": "spiffe://quartermaster.local/agent/intruder"}),
            stack.identity("intruder"),
        ),
        "foreign signer": await authorize(
            stack, "builder-a",
            SessionTokens(keys=SigningKeys.ephemeral(), issuer=stack.tokens.issuer).issue(
                SessionTokenRequest(
                    session_id=state.session_id, principal_id=state.principal_id,
                    agent_identity=state.agent_identity, allowed_services=["*"],
                    expires_at=datetime.now(UTC) + timedelta(hours=1), issued_at=datetime.now(UTC),
                    chain_identities=state.chain_identities,
                )
            ),
            mine,
        ),
        "service outside grant": await authorize(stack, "builder-a", token, mine, service="db/postgres:pro"),
        "over budget": await authorize(stack, "builder-a", token, mine, amount=Money(amount=1001)),
        "other principal": await authorize(stack, "builder-a", token, mine, email="someone@example.com"),
    }  # fmt: skip
    expected = {
        "other identity": ErrorCode.SESSION_INVALID,
        "other identity, my name": ErrorCode.SESSION_INVALID,
        "no identity": ErrorCode.IDENTITY_INVALID,
        "expired": ErrorCode.SESSION_EXPIRED,
        "tampered services": ErrorCode.SESSION_INVALID,
        "tampered binding": ErrorCode.SESSION_INVALID,
        "foreign signer": ErrorCode.SESSION_INVALID,
        "service outside grant": ErrorCode.SERVICE_NOT_ALLOWED,
        "over budget": ErrorCode.BUDGET_EXCEEDED,
        "other principal": ErrorCode.SESSION_INVALID,
    }
    for name, auth in cases.items():
        print(f"{name:26} -> {auth.code}: {auth.reason}")
        assert not auth.allowed and auth.code == expected[name], (name, auth)
        assert auth.reason and "eyJ" not in auth.reason  # no token material in the reason
    # the valid pair still works: refusals changed nothing
    assert (await authorize(stack, "builder-a", token, mine)).allowed


async def test_refused_delegations_create_nothing(identity_stack: IdentityStack) -> None:
    stack = identity_stack
    state, token = await stack.open_root(
        "lead-d", email=EMAIL, allow=["cloud/workers"], budget_minor=500, max_depth=1
    )
    mine = stack.identity("lead-d")

    async def delegate(**kw: object) -> ErrorCode:
        base: dict[str, object] = {"session_token": token, "identity_token": mine, "to_agent": "helper-d"}
        with pytest.raises(QuartermasterError) as err:
            await stack.qm.delegate(DelegationRequest.model_validate({**base, **kw}))
        return err.value.code

    assert await delegate(allowed_services=["cloud/*"]) == ErrorCode.SERVICE_NOT_ALLOWED
    assert await delegate(budget=Money(amount=501)) == ErrorCode.BUDGET_EXCEEDED
    assert await delegate(ttl_seconds=7200) == ErrorCode.INVALID_REQUEST
    assert await delegate(identity_token=stack.identity("intruder")) == ErrorCode.SESSION_INVALID
    assert await delegate(session_token=_tamper(token, services=["*"])) == ErrorCode.SESSION_INVALID
    assert (await stack.qm.show(state.session_id)).children == []
    # within the grant it works, and the child cannot go deeper than max depth 1
    child = await stack.qm.delegate(
        DelegationRequest(session_token=token, identity_token=mine, to_agent="helper-d")
    )
    assert child.grant.budget == Money(amount=500) and child.grant.allowed_services == ["cloud/workers"]
    with pytest.raises(QuartermasterError) as err:
        await stack.qm.delegate(
            DelegationRequest(
                session_token=child.session_token,
                identity_token=stack.identity("helper-d"),
                to_agent="third-d",
            )
        )
    assert err.value.code == ErrorCode.INVALID_REQUEST and "depth" in err.value.message
    assert (await stack.qm.show(child.session_id)).children == []


async def test_frozen_agent_is_refused_until_unfrozen(identity_stack: IdentityStack) -> None:
    stack = identity_stack
    state, token = await stack.open_root("runaway", email=EMAIL)
    mine = stack.identity("runaway")
    assert (await authorize(stack, "runaway", token, mine)).allowed
    result = await stack.qm.freeze("runaway", email=EMAIL, reason="test kill switch")
    assert result.frozen and state.session_id in result.sessions_revoked
    auth = await authorize(stack, "runaway", token, mine)
    assert (auth.allowed, auth.code) == (False, ErrorCode.AGENT_FROZEN)
    # there is no way around a session
    pre = await authorize(stack, "runaway", None, None)
    assert (pre.allowed, pre.code) == (False, ErrorCode.SESSION_REQUIRED)
    assert (await stack.qm.show(state.session_id)).status == "revoked"
    # a new session for a frozen agent is revoked as soon as it is active
    state2, token2 = await stack.open_root("runaway", email=EMAIL, expect="revoked")
    assert token2.reveal() == ""  # no token is handed out for it
    # unfreezing is a human action: approval with the principal's code
    status = await stack.qm.unfreeze("runaway", email=EMAIL)
    assert (
        status.frozen and status.unfreeze_approval_id == f"agent-{state.principal_id}-runaway.agent_unfreeze"
    )
    assert (await stack.approve(status.unfreeze_approval_id, state.principal_id)).status == "ACCEPTED"
    for _ in range(100):
        if not (await stack.qm.agent_status("runaway", email=EMAIL)).frozen:
            break
        await asyncio.sleep(0.05)  # the workflow applies the approved unfreeze
    _, token3 = await stack.open_root("runaway", email=EMAIL)  # a new session works again
    assert (await authorize(stack, "runaway", token3, stack.identity("runaway"))).allowed
    # the revoked sessions stay revoked: unfreezing restores no standing privilege
    assert (await authorize(stack, "runaway", token, mine)).code == ErrorCode.SESSION_REVOKED
    assert (await stack.qm.show(state2.session_id)).status == "revoked"
    actions = [r.event.action for r in stack.audit.iter_all() if r.event.agent_chain == ["runaway"]]
    assert "agent.frozen" in actions and "agent.unfrozen" in actions


async def test_without_a_session_only_a_human_with_the_api_proof(identity_stack: IdentityStack) -> None:
    """The pre-session mode is gone: an agent without a session is refused; a human's own request
    passes only with the API's proof over exactly that email, request and service."""
    stack = identity_stack

    async def human(
        actor: Actor, *, request_id: str | None = "req-1", service: str = "cloud/workers"
    ) -> Authorization:
        req = AuthorizationRequest(actor=actor, service_id=service, request_id=request_id)
        result: Authorization = await ActivityEnvironment().run(stack.sessions.authorize_actor, req)
        return result

    agent = await authorize(stack, "legacy", None, stack.identity("legacy"))
    assert (agent.allowed, agent.code) == (False, ErrorCode.SESSION_REQUIRED)
    claimed = Actor(principal_email=EMAIL, agent="legacy", kind="human")
    assert (await human(claimed)).code == ErrorCode.UNAUTHENTICATED
    signed = sign_human_actor(stack.keyring, claimed, request_id="req-1", service_id="cloud/workers")
    ok = await human(signed)
    assert ok.allowed and ok.principal_id == stack.keyring.principal_id(EMAIL) and ok.session_ids == []
    # the proof names one request, one service and one email
    assert (await human(signed, request_id="req-2")).code == ErrorCode.UNAUTHENTICATED
    assert (await human(signed, request_id=None)).code == ErrorCode.UNAUTHENTICATED
    assert (await human(signed, service="db/postgres")).code == ErrorCode.UNAUTHENTICATED
    other = signed.model_copy(update={"principal_email": "victim@example.com"})
    assert (await human(other)).code == ErrorCode.UNAUTHENTICATED
    as_agent = signed.model_copy(update={"kind": "agent"})
    assert (await human(as_agent)).code == ErrorCode.SESSION_REQUIRED
