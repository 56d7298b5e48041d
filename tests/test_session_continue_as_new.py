"""A session's history is bounded: it continues as new (with its state, its token and its live
credentials) before Temporal's 51,200-event limit, so an agent cannot record its way past the point
where the session's expiry and revocation would still run. A session holds at most 1,000 live
credentials. Only the session's own continue-as-new may carry state: a client's start with a copied
state is denied, and a retried or cron run (which also has a `continued_run_id`) is not believed.

Everything is checked where a user would look: the runs in Temporal's visibility and their histories,
the provider simulators' introspection, the session's state and the close summary."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import timedelta

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, Worker

from models.errors import ErrorCode
from models.limits import LimitsStart, PrincipalLimits
from models.money import Money
from models.provider import Credential
from models.secret import Secret
from models.session import (
    MAX_LIVE_CREDENTIALS,
    DelegationRequest,
    RecordCredential,
    SessionContinuation,
    SessionStart,
    SessionState,
    session_workflow_id,
)
from quartermaster.orchestration.sessions import SessionService
from tests.fixtures.providers import ProviderSims
from tests.fixtures.sessions import IdentityStack
from tests.test_session_revocation import _account, _authorize, _introspect, _mint
from workflows import authority
from workflows.limits import PrincipalLimitsWorkflow
from workflows.session import SessionWorkflow

#: the lowest threshold a start accepts: a few credentials per run
THRESHOLD = 60
#: what one run may grow past the threshold while it lets the handlers in progress finish
MARGIN = 40


async def _runs(client: Client, session_id: str) -> list[WorkflowHistory]:
    """Every run of the session's workflow id, oldest first, as Temporal's visibility lists them."""
    wid = session_workflow_id(session_id)
    runs = [r async for r in client.list_workflows(f"WorkflowId = '{wid}'")]
    histories = [await client.get_workflow_handle(wid, run_id=r.run_id).fetch_history() for r in runs]
    return sorted(histories, key=lambda h: h.events[0].event_time.ToDatetime())


async def _record(stack: IdentityStack, sid: str, pid: str, provider: str, cred: Credential) -> None:
    await ActivityEnvironment().run(
        stack.sessions.record_credential,
        RecordCredential(
            session_id=sid,
            provider=provider,
            credential_id=cred.credential_id,
            account_ref=pid,
            expires_at=cred.expires_at,
        ),
    )


async def _open(
    stack: IdentityStack, service: SessionService, agent: str, email: str
) -> tuple[SessionState, Secret]:
    state = await service.open(
        email=email,
        agent=agent,
        allowed_services=["cloud/*"],
        budget_minor=5000,
        ttl_seconds=3600,
        max_depth=2,
    )
    assert state.approval_id is not None
    assert (await stack.approve(state.approval_id, state.principal_id)).status == "ACCEPTED"
    for _ in range(400):
        state = await service.show(state.session_id)
        if state.status == "active":
            break
        await asyncio.sleep(0.05)
    assert state.status == "active"
    token = await service.token(state.session_id)
    assert token is not None
    return state, token


async def test_a_long_session_continues_as_new_and_its_revocation_still_reaches_everything(
    identity_stack: IdentityStack, provider_sims: ProviderSims
) -> None:
    stack, sims = identity_stack, provider_sims
    service = SessionService(
        temporal=stack.client,
        keyring=stack.keyring,
        task_queue=stack.task_queue,
        continue_as_new_after_events=THRESHOLD,
    )
    email = f"can-{secrets.token_hex(4)}@example.com"
    root, root_token = await _open(stack, service, "planner", email)
    pid = root.principal_id
    account = await _account(stack, sims, "cloud", email, pid)
    minted: list[Credential] = []

    async def mint_on(sid: str, n: int) -> None:
        for _ in range(n):
            cred = await _mint(stack, "cloud", account, 3600)
            await _record(stack, sid, pid, "cloud", cred)
            minted.append(cred)

    # a child delegated in the first run (carried: the runs after it hold no handle for it) ...
    early = await stack.qm.delegate(
        DelegationRequest(
            session_token=root_token, identity_token=stack.identity("planner"), to_agent="coder"
        )
    )
    await mint_on(root.session_id, 25)
    await mint_on(early.session_id, 20)  # ... which continues as new itself
    # ... and one delegated in the last run, which also continues as new before the revocation
    late = await stack.qm.delegate(
        DelegationRequest(
            session_token=root_token, identity_token=stack.identity("planner"), to_agent="tester"
        )
    )
    await mint_on(late.session_id, 20)

    root_runs = await _runs(stack.client, root.session_id)
    child_runs = {sid: await _runs(stack.client, sid) for sid in (early.session_id, late.session_id)}
    print(
        f"\nbefore the revocation: root {len(root_runs)} runs, children "
        f"{[len(r) for r in child_runs.values()]} runs, {len(minted)} credentials"
    )
    assert len(root_runs) >= 3 and all(len(r) >= 2 for r in child_runs.values())
    # the root's live run still holds the whole session: every credential, both children, its token
    live = await service.show(root.session_id)
    assert live.status == "active" and live.children == [early.session_id, late.session_id]
    assert len(live.credentials) == 25 and live.activated_at == root.activated_at
    carried_token = await service.token(root.session_id)
    assert carried_token is not None and carried_token.reveal() == root_token.reveal()
    auth = await _authorize(stack, email, "planner", root_token)
    assert auth.allowed, auth

    summary = await service.revoke(root.session_id, by=pid, reason="task finished")
    assert summary.status == "revoked" and summary.descendants_closed == 2
    assert summary.credentials_revoked == len(minted) == 65 and summary.credential_failures == 0
    for cred in minted:
        assert await _introspect(sims, "cloud", cred.token) == {"active": False}, cred.credential_id
    for sid, agent, token in (
        (early.session_id, "coder", early.session_token),
        (late.session_id, "tester", late.session_token),
    ):
        assert (await service.show(sid)).status == "revoked"
        refused = await _authorize(stack, email, agent, token)
        assert (refused.allowed, refused.code) == (False, ErrorCode.SESSION_REVOKED)

    # every run's history stayed bounded, and every run replays with the current code
    replayer = Replayer(workflows=[SessionWorkflow], data_converter=stack.client.data_converter)
    for sid in (root.session_id, early.session_id, late.session_id):
        for history in await _runs(stack.client, sid):
            assert len(history.events) <= THRESHOLD + MARGIN, (sid, len(history.events))
            await replayer.replay_workflow(history)


async def test_the_bound_check_catches_a_session_that_never_continues_as_new(
    identity_stack: IdentityStack, provider_sims: ProviderSims
) -> None:
    """The broken variant: a threshold out of reach (no continue-as-new) fails the same bound."""
    stack, sims = identity_stack, provider_sims
    service = SessionService(
        temporal=stack.client,
        keyring=stack.keyring,
        task_queue=stack.task_queue,
        continue_as_new_after_events=40_000,
    )
    email = f"nocan-{secrets.token_hex(4)}@example.com"
    root, _ = await _open(stack, service, "planner", email)
    account = await _account(stack, sims, "cloud", email, root.principal_id)
    for _ in range(25):
        await _record(
            stack, root.session_id, root.principal_id, "cloud", await _mint(stack, "cloud", account, 600)
        )
    runs = await _runs(stack.client, root.session_id)
    assert len(runs) == 1 and len(runs[0].events) > THRESHOLD + MARGIN
    await service.revoke(root.session_id, by=root.principal_id)


async def test_a_session_holds_at_most_1000_live_credentials(
    identity_stack: IdentityStack, provider_sims: ProviderSims
) -> None:
    stack, sims = identity_stack, provider_sims
    email = f"cap-{secrets.token_hex(4)}@example.com"
    root, token = await stack.open_root("planner", email=email, allow=["cloud/*"])
    pid = root.principal_id
    account = await _account(stack, sims, "cloud", email, pid)
    handle = stack.client.get_workflow_handle(session_workflow_id(root.session_id))
    # the records the session keeps (no provider needed for the count); 8 updates at a time (the dev
    # server admits 10 in flight per workflow)
    for batch in range(MAX_LIVE_CREDENTIALS // 8):
        await asyncio.gather(
            *(
                handle.execute_update(
                    "record_credential",
                    RecordCredential(
                        session_id=root.session_id,
                        provider="cloud",
                        credential_id=f"cred_fill_{batch}_{i}",
                        account_ref=pid,
                    ),
                )
                for i in range(8)
            )
        )
    assert len((await stack.qm.show(root.session_id)).credentials) == MAX_LIVE_CREDENTIALS

    # the agent is refused before anything is bought ...
    auth = await _authorize(stack, email, "planner", token)
    assert (auth.allowed, auth.code) == (False, ErrorCode.CREDENTIAL_LIMIT_EXCEEDED), auth
    # ... and a credential minted anyway (a race past that check) is revoked at the provider at once
    extra = await _mint(stack, "cloud", account, 600)
    with pytest.raises(Exception) as refused:
        await _record(stack, root.session_id, pid, "cloud", extra)
    cause = refused.value.__cause__ or refused.value
    assert isinstance(refused.value, ApplicationError) or isinstance(cause, ApplicationError)
    assert ErrorCode.CREDENTIAL_LIMIT_EXCEEDED in repr(refused.value)
    assert await _introspect(sims, "cloud", extra.token) == {"active": False}
    state = await stack.qm.show(root.session_id)
    assert len(state.credentials) == MAX_LIVE_CREDENTIALS
    assert extra.credential_id not in {c.credential_id for c in state.credentials}
    await stack.qm.revoke(root.session_id, by=pid)


async def _start_copied(
    stack: IdentityStack, wid: str, state: SessionState, token: Secret, *, queue: str | None = None
) -> SessionState:
    """What a Temporal client without the server-side key can do: a `continued` start of a copied
    state and token, under any workflow id."""
    copied = state.model_copy(update={"status": "active", "closed_reason": None, "closed_at": None})
    handle = await stack.client.start_workflow(
        "SessionWorkflow",
        SessionStart(continued=SessionContinuation(state=copied, token=token)),
        id=wid,
        task_queue=queue or stack.task_queue,
    )
    await asyncio.sleep(0.2)  # its first workflow task
    seen: SessionState = await handle.query("state", result_type=SessionState)
    return seen


async def test_a_client_start_with_a_copied_state_is_denied(identity_stack: IdentityStack) -> None:
    """Copied from an active session (under a fresh id) or from a revoked one (under its own id, to
    bring it back): the start is denied from its first instant."""
    stack = identity_stack
    root, token = await stack.open_root("planner", allow=["cloud/*"])
    await stack.qm.revoke(root.session_id, by=root.principal_id)
    await stack.client.get_workflow_handle(session_workflow_id(root.session_id)).result()
    for wid in (session_workflow_id(root.session_id), f"session-{uuid.uuid4().hex}"):
        state = await _start_copied(stack, wid, root, token)
        assert state.status == "denied" and (state.closed_reason or "").startswith("AUTHORITY_INVALID")
        assert await stack.client.get_workflow_handle(wid).query("session_token") is None


async def test_the_copied_state_check_catches_a_session_that_believes_any_start(
    identity_stack: IdentityStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broken variant: a session that takes every `continued` start for its own becomes active
    (its own worker, unsandboxed, so the patched check is the one that runs)."""
    stack = identity_stack
    root, token = await stack.open_root("planner", allow=["cloud/*"])
    await stack.qm.revoke(root.session_id, by=root.principal_id)
    monkeypatch.setattr(authority, "from_own_continue_as_new", lambda: True)
    queue = f"broken-{uuid.uuid4().hex[:8]}"
    wid = f"session-{uuid.uuid4().hex}"
    async with _unsandboxed(stack.client, queue, SessionWorkflow):
        state = await _start_copied(stack, wid, root, token, queue=queue)
        assert state.status == "active"
        await stack.client.get_workflow_handle(wid).terminate("test over")


def _unsandboxed(client: Client, queue: str, wf: type) -> Worker:
    return Worker(client, task_queue=queue, workflows=[wf], workflow_runner=UnsandboxedWorkflowRunner())


async def _retried_limits(
    client: Client, forged: PrincipalLimits, *, broken: bool = False
) -> tuple[PrincipalLimits, WorkflowHistory]:
    """Start the limits entity with forged limits, a one-second run timeout and a retry policy; return
    what its retried run holds and that run's history."""
    queue = f"retry-{uuid.uuid4().hex[:8]}"
    worker = (
        _unsandboxed(client, queue, PrincipalLimitsWorkflow)
        if broken
        else Worker(client, task_queue=queue, workflows=[PrincipalLimitsWorkflow])
    )
    async with worker:
        handle = await client.start_workflow(
            "PrincipalLimits",
            LimitsStart(principal_id=forged.principal_id, state=forged),
            id=f"limits-{forged.principal_id}",
            task_queue=queue,
            run_timeout=timedelta(seconds=1),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=2),
        )
        first = handle.result_run_id
        second: str | None = None
        for _ in range(200):
            desc = await client.get_workflow_handle(handle.id).describe()
            if desc.run_id != first:
                second = desc.run_id
                break
            await asyncio.sleep(0.05)
        assert second is not None, "the run timeout should have started a retry"
        retried = client.get_workflow_handle(handle.id, run_id=second)
        limits = await retried.query("limits", result_type=PrincipalLimits)
        history = await retried.fetch_history()
        await retried.terminate("test over")
    started = history.events[0]
    assert started.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    attrs = started.workflow_execution_started_event_attributes
    # the retry carries the first run's id: what the old check (`continued_run_id is not None`) trusted
    assert attrs.continued_execution_run_id == first and attrs.attempt == 2
    return limits, history


async def test_a_retried_run_does_not_adopt_state_from_its_start(client: Client) -> None:
    principal = f"p{secrets.token_hex(6)}"
    forged = PrincipalLimits(principal_id=principal, global_limit=Money(amount=10_000_000))
    limits, _ = await _retried_limits(client, forged)
    assert limits.global_limit is None, "a retried run adopted the forged limits"


async def test_the_retry_check_catches_the_old_predicate(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broken variant: trusting `continued_run_id` alone adopts the forged limits on the retry."""
    monkeypatch.setattr(
        authority, "from_own_continue_as_new", lambda: workflow.info().continued_run_id is not None
    )
    principal = f"p{secrets.token_hex(6)}"
    forged = PrincipalLimits(principal_id=principal, global_limit=Money(amount=10_000_000))
    limits, _ = await _retried_limits(client, forged, broken=True)
    assert limits.global_limit == Money(amount=10_000_000)
