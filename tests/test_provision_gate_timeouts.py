"""Every human gate timing out leaves the provider and Stripe as if the request never ran, or, where the
provider cannot undo (an irreversible domain waiting for `information`), keeps the charge and its
spend committed and says so. Checked as a user would: the ledger's committed total against Stripe's
charges minus refunds per principal and provider, and the provider simulator's resources.

Six requests (one per gate) run on a `python worker.py` process with a short approval timeout; in
the killed variant the worker is SIGKILLed while all six wait and restarted after every deadline.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from activities.spend import SpendActivities
from models.limits import LimitChange
from models.money import Money
from models.provisioning import ProvisionResult
from models.request import ProvisionRequest
from providers.registry import ProviderRegistry
from quartermaster.crypto.authority import AuthoritySigner
from quartermaster.orchestration.requests import Orchestrator
from tests.fixtures.stack import Stack, new_email
from tests.test_provision_crashes import worker_process
from tests.test_provision_e2e import resources_named
from tests.test_provision_money import assert_ledger_equals_stripe

GATES = ("terms", "payment_method", "oauth_consent", "purchase", "spend_limit", "information")
APPROVAL_TIMEOUT = 15
CONTACT = {"name": "Alice", "email": "alice@example.com", "country": "DE"}


@dataclass
class Trial:
    gate: str
    email: str
    req: ProvisionRequest

    @property
    def provider(self) -> str:
        return self.req.provider


def _request(stack: Stack, gate: str, email: str) -> ProvisionRequest:
    domain = {"domain": f"{secrets.token_hex(4)}.dev"}
    service, config = {
        "terms": ("cloud/workers", {}),
        "payment_method": ("cloud/r2", {}),
        "oauth_consent": ("mail/send:starter", {}),
        "purchase": ("cloud/registrar:domain", {**domain, "registrant_contact": CONTACT}),
        "spend_limit": ("cloud/r2", {}),
        "information": ("cloud/registrar:domain", domain),  # no contact: the provider will ask
    }[gate]
    return stack.request(service, email, configuration=config)


async def _drive(stack: Stack, qm: Orchestrator, trial: Trial) -> dict[str, Any]:
    """Take the request up to its gate, approving every gate before it; return that gate's approval."""
    req, email = trial.req, trial.email
    await qm.submit(req)
    steps = ["terms", "payment_method", "purchase"] if trial.gate == "information" else []
    steps = {"payment_method": ["terms"], "purchase": ["terms", "payment_method"]}.get(trial.gate, steps)
    steps = ["terms", "payment_method"] if trial.gate == "spend_limit" else steps
    for step in steps:
        a = await stack.wait_for_approval(req.request_id, step)
        if step == "payment_method":
            await stack.attach_card(a["details"]["checkout_url"])
        else:
            await stack.decide(a["approval_id"], email)
    return await stack.wait_for_approval(req.request_id, trial.gate, timeout=60)


async def _lower_cap(stack: Stack, task_queue: str, email: str) -> None:
    """This principal's cloud cap at USD 1, so a USD 5 purchase asks for a spend_limit approval."""
    authority = AuthoritySigner.from_keyring(stack.keyring)  # a server-side change: it needs the key
    spend = SpendActivities(stack.client, task_queue, authority=authority, providers=["cloud"])
    await spend.set_spend_limit(
        LimitChange(
            change_id=f"test-{uuid.uuid4().hex[:8]}",
            principal_id=stack.principal_id(email),
            provider="cloud",
            limit=Money(amount=100),
            approval_id="test.limit_change",
            changed_at=datetime.now(UTC),
        )
    )


async def _check(stack: Stack, trial: Trial, res: ProvisionResult) -> None:
    assert (res.outcome, res.error_code) in (
        ("rejected", "APPROVAL_TIMED_OUT"),
        ("undone", "APPROVAL_TIMED_OUT"),
    ), (trial.gate, res)
    kept = await assert_ledger_equals_stripe(stack, trial.email, trial.provider, trial.req.request_id)
    rows = await resources_named(stack, trial.provider, trial.req.name)
    if trial.gate == "information":  # the registrar cannot undo: charge kept, spend committed, said so
        assert kept == 1099 and res.kept_charge is not None, res
        assert [r["status"] for r in rows] == ["needs_information"]
        assert any("kept committed" in c for c in res.compensations), res.compensations
    else:
        assert (kept, rows, res.kept_charge) == (0, [], None), (trial.gate, res, rows)
    history = await stack.client.get_workflow_handle(f"provision-{trial.req.request_id}").fetch_history()
    assert not [e for e in history.events if e.HasField("workflow_task_failed_event_attributes")]


@pytest.mark.parametrize("killed", [False, True], ids=["worker-alive", "worker-killed-across-deadline"])
async def test_every_gate_timing_out_leaves_money_and_provider_accounted(stack: Stack, killed: bool) -> None:
    task_queue = f"qm-gates-{uuid.uuid4().hex[:6]}"
    settings = stack.settings.model_copy(
        update={"task_queue": task_queue, "approval_timeout_seconds": APPROVAL_TIMEOUT}
    )
    qm = Orchestrator(
        temporal=stack.client,
        settings=settings,
        keyring=stack.keyring,
        registry=ProviderRegistry.from_settings(settings),
    )
    address = stack.client.service_client.config.target_host
    env = {"QM_APPROVAL_TIMEOUT_SECONDS": str(APPROVAL_TIMEOUT)}
    trials = [Trial(gate, email, _request(stack, gate, email)) for gate in GATES for email in [new_email()]]
    by_gate = {t.gate: t for t in trials}
    await stack.seed_account("mail", by_gate["oauth_consent"].email)

    async def results() -> list[ProvisionResult]:
        handles = [
            stack.client.get_workflow_handle(f"provision-{t.req.request_id}", result_type=ProvisionResult)
            for t in trials
        ]
        return list(await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120))

    with worker_process(stack, task_queue, address, **env) as first:
        await _lower_cap(stack, task_queue, by_gate["spend_limit"].email)
        waiting = await asyncio.gather(*(_drive(stack, qm, t) for t in trials))
        deadline = max(datetime.fromisoformat(a["expires_at"]) for a in waiting)
        assert datetime.now(UTC) < min(datetime.fromisoformat(a["expires_at"]) for a in waiting)
        if not killed:
            done = await results()
            for trial, res in zip(trials, done, strict=True):  # queries need the worker: check here
                await _check(stack, trial, res)
        else:
            first.send_signal(signal.SIGKILL)  # every request is waiting; no deadline has passed yet
            first.wait(10)
    if killed:
        await asyncio.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()) + 1)
        with worker_process(stack, task_queue, address, **env):
            started = time.monotonic()
            done = await results()
            print(f"\nafter the deadlines, restart-to-completion of six timed-out requests: "
                  f"{time.monotonic() - started:.1f} s")  # fmt: skip
            for trial, res in zip(trials, done, strict=True):
                await _check(stack, trial, res)
