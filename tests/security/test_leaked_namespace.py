"""A leaked namespace credential: a Temporal client with the payload keys (it reads and writes
encrypted payloads) but none of the server-side keys sends changes of money and authority straight to
the workflows of the real worker (`worker.build_worker`, the e2e stack). Each attack reports what it
changed, judged from what a user would check: ledger views, a genuine purchase that now fits or not,
the principal's limits, session and agent state, where approval codes went. None may change anything.

The same attacks against a deliberately broken worker (its proof and code verification patched to
accept everything) must report breaches, so the suite can fail.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError

import activities.sessions as session_activities
from activities.spend import SpendActivities
from models.authority import VERIFIER
from models.ledger import (
    CommitLayers,
    LedgerLayer,
    LedgerView,
    ReserveLayers,
    agent_ledger_id,
    monthly_ledger_id,
    velocity_ledger_id,
)
from models.limits import AgentLimits, LimitChange, limits_workflow_id
from models.money import Money
from models.provisioning import ProvisionResult
from models.request import Actor
from models.session import AgentStatus, DelegationRequest, agent_workflow_id
from quartermaster.codec import EncryptionCodec
from quartermaster.converter import data_converter
from quartermaster.crypto.authority import AuthoritySigner
from tests.fixtures.stack import Stack, new_email

MILLION = {"amount": 100_000_000, "currency": "usd"}
ATTACKER_EMAIL = "attacker@evil.example.com"
#: a well-formed proof by a key the attacker made up (the best it can do without the authority key)
FORGED = f"qa1.a1.{int(time.time())}.{'A' * 43}"


@dataclass
class Ctx:
    stack: Stack
    attacker: Client
    spend: SpendActivities

    @property
    def queue(self) -> str:
        return self.stack.settings.task_queue


Attack = Callable[[Ctx], Awaitable[str | None]]


@pytest.fixture
async def ctx(stack: Stack) -> AsyncIterator[Ctx]:
    codec_only = stack.keyring.codec_only()  # payload keys only: what the UI codec server holds
    assert codec_only.authority == () and codec_only.seal == ()
    attacker = await Client.connect(
        stack.client.service_client.config.target_host,
        namespace=stack.client.namespace,
        data_converter=data_converter(EncryptionCodec(codec_only)),
    )
    spend = SpendActivities(
        stack.client,
        stack.settings.task_queue,
        authority=AuthoritySigner.from_keyring(stack.keyring),
        providers=list(stack.settings.providers),
        # the victim's layers in their own ledgers, which these attacks aim at (tests/test_spend_books.py
        # sends the same forged and misdirected calls to the books)
        books=False,
    )
    yield Ctx(stack=stack, attacker=attacker, spend=spend)


# ---- helpers --------------------------------------------------------------------------------------


async def _quietly(call: Awaitable[Any]) -> Any:
    """Send an attack; a refusal is the expected answer (what counts is what changed)."""
    try:
        return await call
    except (WorkflowUpdateFailedError, RPCError, WorkflowFailureError, TimeoutError):
        return None


def _cap(principal: str, provider: str = "cloud") -> LedgerLayer:
    return LedgerLayer(
        ledger_id=monthly_ledger_id(principal, provider, datetime.now(UTC)),
        limit=Money.usd(100),
        kind="monthly",
    )


def _principal() -> str:
    return "p" + uuid.uuid4().hex[:20]


async def _buy(c: Ctx, principal: str, pid: str, usd: float, provider: str = "cloud") -> bool:
    out = await c.spend.reserve_spend(
        ReserveLayers(
            purchase_id=pid, amount=Money.usd(usd), layers=[_cap(principal, provider)], principal_id=principal
        )
    )
    return out.ok


async def _view(c: Ctx, ledger_id: str) -> LedgerView:
    view = await c.spend.ledger_view(ledger_id)
    assert view is not None
    return view


def _money_of(v: LedgerView) -> tuple[Any, ...]:
    return (
        v.limit,
        v.effective_limit,
        v.committed,
        v.reserved,
        sorted(r.purchase_id for r in v.reservations),
    )


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False


# ---- attacks ----------------------------------------------------------------------------------------


async def raise_the_cap(c: Ctx) -> str | None:
    """`set_limit` straight to a ledger: USD 1,000,000, with no proof and with a made-up one."""
    principal = _principal()
    assert await _buy(c, principal, "genuine", 60)
    ledger = c.attacker.get_workflow_handle(_cap(principal).ledger_id)
    before = _money_of(await _view(c, ledger.id))
    for proof in (None, FORGED):
        await _quietly(ledger.execute_update("set_limit", {"limit": MILLION, "version": 99, "proof": proof}))
    after = _money_of(await _view(c, ledger.id))
    if after != before:
        return f"ledger changed: {before} -> {after}"
    if await _buy(c, principal, "big", 500):
        return "a USD 500 purchase fits a USD 100 cap"
    return None


async def override_the_cap(c: Ctx) -> str | None:
    """Reserve over the cap with a made-up override id (and a made-up requesting workflow)."""
    principal = _principal()
    assert await _buy(c, principal, "genuine", 90)
    ledger = c.attacker.get_workflow_handle(_cap(principal).ledger_id)
    before = _money_of(await _view(c, ledger.id))
    evil = {
        "purchase_id": "evil",
        "amount": {"amount": 50_000, "currency": "usd"},
        "override_approval_id": "provision-evil.spend_limit",
        "requested_by": "provision-evil",
    }
    for proof in (None, FORGED):
        await _quietly(ledger.execute_update("reserve", {**evil, "proof": proof}))
    after = _money_of(await _view(c, ledger.id))
    return None if after == before else f"ledger changed: {before} -> {after}"


async def erase_spend(c: Ctx) -> str | None:
    """Commit a hold at zero, release it, forget it: the month's spend and holds must stay."""
    principal = _principal()
    cap = _cap(principal)
    assert await _buy(c, principal, "spent", 60)
    await c.spend.commit_spend(CommitLayers(purchase_id="spent", amount=Money.usd(60), layers=[cap]))
    assert await _buy(c, principal, "held", 20)
    ledger = c.attacker.get_workflow_handle(cap.ledger_id)
    before = _money_of(await _view(c, cap.ledger_id))
    zero = {"amount": 0, "currency": "usd"}
    await _quietly(ledger.execute_update("commit", {"purchase_id": "held", "amount": zero}))
    await _quietly(ledger.execute_update("release", {"purchase_id": "held", "forget": True}))
    await _quietly(ledger.execute_update("release", {"purchase_id": "spent"}))
    after = _money_of(await _view(c, cap.ledger_id))
    return None if after == before else f"ledger changed: {before} -> {after}"


async def start_a_rich_ledger(c: Ctx) -> str | None:
    """Start this month's ledger before the worker does, with a USD 1,000,000 limit."""
    principal = _principal()
    ledger_id = _cap(principal, "db").ledger_id
    start = {"ledger_id": ledger_id, "kind": "monthly", "limit": MILLION, "limit_version": 99, "month": None}
    handle = await c.attacker.start_workflow("SpendLedger", start, id=ledger_id, task_queue=c.queue)
    # refused at once: the forged ledger fails before it counts anything (the worker then starts its own)
    await _quietly(asyncio.wait_for(handle.result(), timeout=5))
    if await _buy(c, principal, "big", 500, provider="db"):
        return "a USD 500 purchase fits a USD 100 cap"
    return None


async def raise_the_principal_limits(c: Ctx) -> str | None:
    """`set_limit` to the principal's limits entity, and a limits entity started with rich limits."""
    principal = _principal()
    change = {
        "change_id": "evil-1",
        "principal_id": principal,
        "provider": None,
        "limit": MILLION,
        "approval_id": "limit-change-evil.limit_change",
        "changed_at": datetime.now(UTC).isoformat(),
    }
    state = {"principal_id": principal, "global_limit": MILLION, "version": 7}
    wid = limits_workflow_id(principal)
    await c.attacker.start_workflow(
        "PrincipalLimits", {"principal_id": principal, "state": state}, id=wid, task_queue=c.queue
    )
    for proof in (None, FORGED):
        await _quietly(
            c.attacker.get_workflow_handle(wid).execute_update("set_limit", {**change, "proof": proof})
        )
    limits = await c.spend.principal_limits(principal)
    if limits.for_provider("cloud") != Money.usd(100):
        return f"limits changed: {limits.for_provider('cloud')}"
    if await _buy(c, principal, "big", 500):
        return "a USD 500 purchase fits a USD 100 cap"
    return None


async def ask_a_limit_change_for_someone_else(c: Ctx) -> str | None:
    """Start a limit change for a victim with the attacker's address, so the code comes to it."""
    victim = _principal()
    wid = f"limit-change-{victim}-{uuid.uuid4().hex[:8]}"
    req = {
        "principal_id": victim,
        "principal_email": ATTACKER_EMAIL,
        "provider": None,
        "limit": MILLION,
    }
    handle = await c.attacker.start_workflow("LimitChange", req, id=wid, task_queue=c.queue)
    try:
        result = await asyncio.wait_for(handle.result(), timeout=5)
    except TimeoutError:
        await handle.terminate("attack over")
        return "a limit-change approval code went to the attacker's address"
    return None if result["status"] == "refused" else f"limit change ended {result['status']}"


#: the human's genuine agent limits in `raise_the_agent_limits` (set through an approved change)
_AGENT_LIMITS = AgentLimits(monthly=Money.usd(10), per_transaction=Money.usd(5), purchases_per_hour=1)


async def _agent_buy(c: Ctx, principal: str, pid: str, usd: float) -> bool:
    now = datetime.now(UTC)
    layers = [
        _cap(principal),
        LedgerLayer(
            ledger_id=agent_ledger_id(principal, "planner", now), limit=Money.usd(1), kind="agent_monthly"
        ),
        LedgerLayer(ledger_id=velocity_ledger_id(principal, "planner"), limit=Money.usd(1), kind="velocity"),
    ]
    out = await c.spend.reserve_spend(
        ReserveLayers(purchase_id=pid, amount=Money.usd(usd), layers=layers, principal_id=principal)
    )
    return out.ok


async def raise_the_agent_limits(c: Ctx) -> str | None:
    """`set_limit` of an agent's monthly limit, per-purchase maximum and purchases per hour (for the
    agent and for every agent) to the limits entity; the velocity ledger's count erased, or a higher
    limit carried in on a reservation."""
    principal = _principal()
    values = {
        "agent_monthly": {"limit": _AGENT_LIMITS.monthly},
        "per_transaction": {"limit": _AGENT_LIMITS.per_transaction},
        "velocity": {"purchases_per_hour": _AGENT_LIMITS.purchases_per_hour},
    }
    for kind, value in values.items():  # the human's own, approved: the worker's activity signs them
        await c.spend.set_spend_limit(
            LimitChange(
                change_id=f"genuine-{kind}",
                principal_id=principal,
                kind=kind,  # type: ignore[arg-type]
                agent="planner",
                approval_id=f"genuine-{kind}.limit_change",
                changed_at=datetime.now(UTC),
                **value,  # type: ignore[arg-type]
            )
        )
    assert await _agent_buy(c, principal, "genuine", 4)  # the one purchase this hour allows
    wid = limits_workflow_id(principal)
    evil = {"agent_monthly": {"limit": MILLION}, "per_transaction": {"limit": MILLION}}
    evil["velocity"] = {"purchases_per_hour": 10_000}  # type: ignore[dict-item]
    for kind, value in evil.items():
        for agent in ("planner", None):
            change = {
                "change_id": f"evil-{kind}-{agent}",
                "principal_id": principal,
                "kind": kind,
                "agent": agent,
                **value,
                "approval_id": "limit-change-evil.limit_change",
                "changed_at": datetime.now(UTC).isoformat(),
            }
            for proof in (None, FORGED):
                handle = c.attacker.get_workflow_handle(wid)
                await _quietly(handle.execute_update("set_limit", {**change, "proof": proof}))
    velocity = c.attacker.get_workflow_handle(velocity_ledger_id(principal, "planner"))
    for proof in (None, FORGED):
        await _quietly(velocity.execute_update("release", {"purchase_id": "genuine", "proof": proof}))
        reserve = {
            "purchase_id": "evil",
            "amount": {"amount": 100, "currency": "usd"},
            "limit": {"amount": 10_000, "currency": "usd"},
            "limit_version": 999,
            "proof": proof,
        }
        await _quietly(velocity.execute_update("reserve", reserve))
    limits = (await c.spend.principal_limits(principal)).for_agent("planner")
    if limits != _AGENT_LIMITS:
        return f"agent limits changed: {limits}"
    if await _agent_buy(c, principal, "second", 1):
        return "a second purchase this hour fits a limit of one per hour"
    return None


async def ask_an_agent_limit_change_for_someone_else(c: Ctx) -> str | None:
    """Start a change of a victim's purchases per hour with the attacker's address for the code."""
    victim = _principal()
    wid = f"limit-change-{victim}-{uuid.uuid4().hex[:8]}"
    req = {
        "principal_id": victim,
        "principal_email": ATTACKER_EMAIL,
        "kind": "velocity",
        "agent": "planner",
        "purchases_per_hour": 10_000,
    }
    handle = await c.attacker.start_workflow("LimitChange", req, id=wid, task_queue=c.queue)
    try:
        result = await asyncio.wait_for(handle.result(), timeout=5)
    except TimeoutError:
        await handle.terminate("attack over")
        return "an agent-limit approval code went to the attacker's address"
    return None if result["status"] == "refused" else f"limit change ended {result['status']}"


def _active_state(principal: str, session_id: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "session_id": session_id,
        "principal_id": principal,
        "agent": "evil",
        "agent_identity": "spiffe://quartermaster.local/agent/evil",
        "chain": ["evil"],
        "chain_identities": ["spiffe://quartermaster.local/agent/evil"],
        "grant": {
            "allowed_services": ["*"],
            "budget": MILLION,
            "expires_at": (now + timedelta(days=7)).isoformat(),
            "max_depth": 8,
        },
        "budget_ledger_id": f"budget-session-{session_id}",
        "status": "active",
        "created_at": now.isoformat(),
        "activated_at": now.isoformat(),
    }


async def _session_status(c: Ctx, session_id: str, settled: Callable[[str], bool]) -> str:
    state: dict[str, str] = {"status": ""}

    async def check() -> bool:
        state["status"] = (await c.stack.sessions.show(session_id)).status
        return settled(state["status"])

    await _until(check)
    return state["status"]


async def start_an_active_session(c: Ctx) -> str | None:
    """A session workflow started straight in the active state, with a USD 1,000,000 budget."""
    sid = secrets.token_hex(16)
    doc = {"delegated": _active_state(_principal(), sid)}
    await c.attacker.start_workflow("SessionWorkflow", doc, id=f"session-{sid}", task_queue=c.queue)
    status = await _session_status(c, sid, lambda s: s != "")
    return None if status != "active" else "an active session with a USD 1,000,000 budget"


async def open_a_session_for_someone_else(c: Ctx) -> str | None:
    """A root session for a victim whose approval code would go to the attacker's address."""
    sid = secrets.token_hex(16)
    victim = c.stack.keyring.principal_id(new_email())
    open_req = {
        "session_id": sid,
        "principal_id": victim,
        "principal_email": ATTACKER_EMAIL,
        "agent": "evil",
        "allowed_services": ["*"],
        "budget": MILLION,
    }
    await c.attacker.start_workflow(
        "SessionWorkflow", {"open": open_req}, id=f"session-{sid}", task_queue=c.queue
    )
    status = await _session_status(c, sid, lambda s: s not in ("", "pending_approval"))
    return None if status == "denied" else f"the session is {status} (a code went to the attacker)"


async def bring_a_revoked_session_back(c: Ctx) -> str | None:
    """Revoke a delegated session, then start it again with its own start copied from history."""
    email = new_email()
    root = await c.stack.sessions.open(
        email=email, agent="planner", allowed_services=["cloud/*"], budget_minor=5000, max_depth=1
    )
    aid = root.approval_id
    assert aid is not None

    async def delivered() -> bool:
        return any(m.get("approval_id") == aid for m in c.stack.inbox(email))

    assert await _until(delivered)
    assert (await c.stack.decide(aid, email)).status == "ACCEPTED"
    assert await _session_status(c, root.session_id, lambda s: s == "active") == "active"
    token = await c.stack.sessions.token(root.session_id)
    assert token is not None
    child = await c.stack.sessions.delegate(
        DelegationRequest(session_token=token, identity_token=c.stack.identity("planner"), to_agent="helper")
    )
    await c.stack.sessions.revoke(child.session_id, by=root.principal_id)
    wid = f"session-{child.session_id}"
    events = c.attacker.get_workflow_handle(wid).fetch_history_events()
    first = await anext(aiter(events))  # the child's start
    payloads = first.workflow_execution_started_event_attributes.input.payloads
    codec = c.attacker.data_converter.payload_codec
    assert codec is not None
    copied = json.loads((await codec.decode(list(payloads)))[0].data)
    assert copied["proof"]  # the genuine start, proof and all
    await _quietly(c.attacker.get_workflow_handle(wid).terminate("make room"))  # if still finishing
    await c.attacker.start_workflow(
        "SessionWorkflow",
        copied,
        id=wid,
        task_queue=c.queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    status = await _session_status(c, child.session_id, lambda s: s != "revoked")
    return None if status != "active" else "a revoked session is active again"


async def unfreeze_an_agent(c: Ctx) -> str | None:
    """Unfreeze a frozen agent, with the approval code sent to the attacker's address."""
    email = new_email()
    await c.stack.sessions.freeze("runaway", email=email, reason="kill switch")
    wid = agent_workflow_id(c.stack.keyring.principal_id(email), "runaway")
    req = {"principal_id": c.stack.keyring.principal_id(email), "principal_email": ATTACKER_EMAIL}
    for proof in (None, FORGED):
        await _quietly(
            c.attacker.get_workflow_handle(wid).execute_update("unfreeze", {**req, "proof": proof})
        )
    status: AgentStatus = await c.stack.sessions.agent_status("runaway", email=email)
    if not status.frozen:
        return "the agent is unfrozen"
    if status.unfreeze_approval_id is not None:
        return "an unfreeze approval code went to the attacker's address"
    return None


async def decide_or_lock_out_an_approval(c: Ctx) -> str | None:
    """Approve a human's pending approval, and try to lock the human out with wrong and empty codes."""
    email = new_email()
    req = c.stack.request("cloud/workers", email)
    await c.stack.qm.submit(req)
    approval = await c.stack.wait_for_approval(req.request_id, "terms")
    aid = approval["approval_id"]
    handle = c.attacker.get_workflow_handle(f"provision-{req.request_id}")
    for code in ["AAAAA-BBBBB"] * 6 + ["", "CCCCC-DDDDD"]:
        for caller in (None, "planner", c.stack.keyring.principal_id(email)):
            decision = {
                "approval_id": aid,
                "decision": "approve",
                "code": code,
                "caller": caller,
                "proof": FORGED,
            }
            out = await _quietly(handle.execute_update("submit_decision", decision))
            if out is not None and out["status"] == "ACCEPTED":
                return "the attacker's decision was accepted"
    pending = [a["approval_id"] for a in await handle.query("pending_approvals")]
    if aid not in pending:
        return "the human's approval was closed by the attacker"
    outcome = await c.stack.decide(aid, email)  # the human still decides, with every try left
    return None if outcome.status == "ACCEPTED" else f"the human's own code was answered {outcome.status}"


async def provision_as_someone_else(c: Ctx) -> str | None:
    """A provisioning request naming a victim's email, as a human without the API's proof."""
    email = new_email()
    request_id = uuid.uuid4().hex[:16]
    actor = Actor(principal_email=email, agent="planner", kind="human", proof=FORGED)
    req = c.stack.request("cloud/workers", email, request_id=request_id, actor=actor)
    handle = await c.attacker.start_workflow(
        "ProvisionWorkflow", req.model_dump(mode="json"), id=f"provision-{request_id}", task_queue=c.queue
    )

    async def settled() -> bool:
        desc = await handle.describe()
        return desc.status != WorkflowExecutionStatus.RUNNING or bool(await handle.query("pending_approvals"))

    await _until(settled, timeout=10)
    if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
        await handle.terminate("attack over")
        return "the request runs for the victim (waiting for the victim's terms approval)"
    result = ProvisionResult.model_validate(await handle.result())
    return None if result.outcome == "rejected" else f"the request ended {result.outcome}"


#: every attack; those marked True are stopped by proof or code verification alone, so the broken
#: worker (verification accepting everything) must let them through
ATTACKS: list[tuple[Attack, bool]] = [
    (raise_the_cap, True),
    (override_the_cap, True),
    (erase_spend, True),
    (start_a_rich_ledger, True),
    (raise_the_principal_limits, True),
    (ask_a_limit_change_for_someone_else, True),
    (raise_the_agent_limits, True),
    (ask_an_agent_limit_change_for_someone_else, True),
    (start_an_active_session, False),  # a delegated state also needs its parent session to start it
    (open_a_session_for_someone_else, True),
    (bring_a_revoked_session_back, False),  # likewise
    (unfreeze_an_agent, True),
    (decide_or_lock_out_an_approval, True),
    (provision_as_someone_else, True),
]


@pytest.mark.parametrize("attack", [a for a, _ in ATTACKS], ids=[a.__name__ for a, _ in ATTACKS])
async def test_a_leaked_namespace_credential_changes_no_money_or_authority(ctx: Ctx, attack: Attack) -> None:
    assert await attack(ctx) is None


async def test_the_suite_catches_a_worker_that_skips_verification(
    ctx: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broken variant: the worker's verifier accepts any proof and any code."""
    monkeypatch.setattr(VERIFIER, "verify", lambda *a, **k: True)
    monkeypatch.setattr(VERIFIER, "code_matches", lambda *a, **k: True)
    monkeypatch.setattr(session_activities, "verify_proof", lambda *a, **k: True)
    breaches = {attack.__name__: await attack(ctx) for attack, by_verification in ATTACKS if by_verification}
    assert [name for name, breach in breaches.items() if breach is None] == [], breaches


def test_the_attacker_holds_no_server_side_key(stack: Stack) -> None:
    codec_only = stack.keyring.codec_only()
    assert codec_only.missing() == ["principal", "authority", "assertion", "attestor", "session"]
    assert json.loads(codec_only.to_json()).keys() == {"payload", "seal"}
