"""Two hosts, one PostgreSQL store: two workers on separate data directories (sharing the key material
and one Temporal server) serve one principal's purchases, rotation and removal, with each step landing
on the other host. Before the store was shared this failed with `NOT_FOUND: no connection to cloud for
this principal`, a second terms approval, and a credential left unrevoked at the provider.

(The API replicas of issue 15's full scenario are the lead's; this proves the store half with workers.)
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

import worker as worker_module
from models.request import Actor
from providers.notifier import read_inbox
from providers.registry import ProviderRegistry
from quartermaster.config import Settings
from quartermaster.keys import Keyring
from quartermaster.orchestration.requests import Orchestrator
from tests.fixtures.stack import new_email, open_stack
from tests.test_provision_e2e import introspect, result_of

#: key material every host shares (issue 15 item 2 moves the signing keys into the one key file)
SHARED_KEY_FILES = ("keys.json", "assertion-keys.json", "attestor-keys.json", "session-keys.json")


async def activity_identities(client: Client, workflow_id: str) -> set[str]:
    """The worker identities that started this workflow's activities, from its history."""
    seen: set[str] = set()
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.HasField("activity_task_started_event_attributes"):
            seen.add(event.activity_task_started_event_attributes.identity)
    return seen


@pytest.mark.parametrize("shared", [True, False], ids=["shared-store", "broken-per-host-store"])
async def test_two_workers_on_two_hosts_share_one_postgres_store(
    client: Client, keyring: Keyring, tmp_path_factory: pytest.TempPathFactory, postgres_db: str, shared: bool
) -> None:
    """`broken-per-host-store` gives host B its own SQLite store, as before issue 15: the harness must
    catch it (rotation on host B finds no account credential, the old credential stays live)."""
    host_a, host_b = tmp_path_factory.mktemp("host-a"), tmp_path_factory.mktemp("host-b")
    async with open_stack(client, keyring, host_a, database_url=postgres_db) as stack:
        for name in SHARED_KEY_FILES:
            if (host_a / name).exists():
                shutil.copy2(host_a / name, host_b / name)
        queue = f"qm-2h-{uuid.uuid4().hex[:6]}"
        settings_a = stack.settings.model_copy(update={"task_queue": queue})
        settings_b = settings_a.model_copy(
            update={"data_dir": host_b, "database_url": postgres_db if shared else None}
        )
        qm = Orchestrator(
            temporal=client,
            settings=settings_a,
            keyring=keyring,
            registry=ProviderRegistry.from_settings(settings_a),
        )
        email = new_email()
        principal = keyring.principal_id(email)
        actor = Actor(principal_email=email, agent="planner")

        def inbox() -> list[dict[str, object]]:
            # the notifier activity writes the dev inbox of whichever host ran it
            return [m for host in (host_a, host_b) for m in read_inbox(Path(host) / "inbox", principal)]

        async def code_for(approval_id: str) -> str:
            for _ in range(100):
                codes = [m["code"] for m in inbox() if m.get("approval_id") == approval_id]
                if codes:
                    return str(codes[-1])
                await asyncio.sleep(0.05)
            raise AssertionError(f"no code for {approval_id}")

        def host_worker(settings: Settings, identity: str) -> Worker:
            store = worker_module.build_store(settings, keyring)
            return worker_module.build_worker(client, settings, keyring, store, identity=identity)

        # host A: a new principal accepts the terms; Quartermaster creates the account
        first = stack.request("cloud/workers", email)
        async with host_worker(settings_a, "host-a"):
            await qm.submit(first)
            terms = await stack.wait_for_approval(first.request_id, "terms")
            await stack.decide(terms["approval_id"], email, code=await code_for(terms["approval_id"]))
            res1 = await result_of(stack, first.request_id)
        assert res1.outcome == "completed" and res1.link_action == "created", res1

        if not shared:
            async with host_worker(settings_b, "host-b"):
                broken = await qm.rotate(res1.resource_id, actor, "rot-1")
            assert (broken.outcome, broken.error_code) != ("completed", None), broken
            assert "NOT_FOUND" in str(broken), broken
            old = res1.credential.env["CLOUD_API_TOKEN"].reveal()
            assert (await introspect(stack, "cloud", old))["active"] is True
            return

        # host B (host A is gone): a second purchase, then rotate and remove the first resource
        second = stack.request("cloud/workers", email)
        async with host_worker(settings_b, "host-b"):
            await qm.submit(second)
            res2 = await result_of(stack, second.request_id, timeout=60)
            rotated = await qm.rotate(res1.resource_id, actor, "rot-1")
            removed = await qm.remove(res1.resource_id, actor)
        assert res2.outcome == "completed", res2
        assert (rotated.outcome, removed.outcome) == ("completed", "completed"), (rotated, removed)

        # the work really landed on both hosts
        assert await activity_identities(client, f"provision-{first.request_id}") == {"host-a"}
        for wid in (
            f"provision-{second.request_id}",
            f"rotate-{res1.resource_id}-rot-1",
            f"remove-{res1.resource_id}",
        ):
            assert await activity_identities(client, wid) == {"host-b"}, wid

        # nothing asked twice, one account, every credential of the removed resource revoked
        assert sum(1 for m in inbox() if m.get("kind") == "terms") == 1
        assert not any(m.get("kind") == "oauth_consent" for m in inbox())
        state = await stack.provider_state("cloud")
        accounts = [a for a in state["accounts"] if a["email"] == email]
        assert len(accounts) == 1, accounts
        old = res1.credential.env["CLOUD_API_TOKEN"].reveal()
        new = rotated.credential.env["CLOUD_API_TOKEN"].reveal()
        assert await introspect(stack, "cloud", old) == {"active": False}
        assert await introspect(stack, "cloud", new) == {"active": False}
        assert (await introspect(stack, "cloud", res2.credential.env["CLOUD_API_TOKEN"].reveal()))["active"]
        (row,) = [r for r in state["resources"] if r["resource_id"] == res1.resource_id]
        assert row["status"] == "removed"
        # and the shared audit trail is one verifiable chain written by both hosts
        report = stack.store.audit.verify()
        assert report.ok and report.records > 0
