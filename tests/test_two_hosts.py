"""Many hosts (issue 15): every worker and API replica shares one store and one key file.

`test_two_workers_and_two_api_replicas` is the issue's scenario with real processes: two `worker.py`
and two `python -m quartermaster.api`, each with its own data directory (PostgreSQL) or all on one
(the SQLite default), sharing one Temporal dev server; callers alternate between the replicas and
the providers call back through a round-robin load balancer. A new principal accepts the terms (on
the approval page: the session opened on replica A decides on replica B) and gets an account; a
second purchase asks nothing; rotate; an existing account is linked by OAuth while the worker that
ran `start_oauth` is SIGKILLed during the consent (the other host completes it); everything is
removed. Asserted from what a user can check: the histories' worker identities, the provider
simulator's accounts, resources and token introspection, the notifications sent, the audit chain.

`test_two_workers_on_two_hosts_share_one_postgres_store` is the store half with in-process workers,
and its broken variant (a per-host store, as before issue 15) shows the harness catches the bug.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.worker import Worker

import worker as worker_module
from models.request import Actor
from providers.notifier import read_inbox
from providers.registry import ProviderRegistry
from providers.store import open_store
from quartermaster.api.page_sessions import COOKIE
from quartermaster.client import QuartermasterClient
from quartermaster.config import STORE_FILE, Settings
from quartermaster.keys import Keyring, write_key_file
from quartermaster.orchestration.requests import Orchestrator
from tests.fixtures.hosts import (
    HostProcess,
    RoundRobin,
    server_env,
    start_api,
    start_worker,
    wait_until_ready,
)
from tests.fixtures.providers import client_auth
from tests.fixtures.servers import free_port, serve_asgi
from tests.fixtures.stack import new_email, open_stack, serve_simulators
from tests.test_provision_e2e import introspect, result_of

#: key material every host shares (the signing keys now live in keys.json; older files kept for
#: data directories of earlier releases)
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


# -- the scenario: real worker and API processes ----------------------------------------------
HIDDEN = re.compile(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"')


@dataclass
class Deployment:
    """Two workers and two API replicas (real processes), the simulators, the load balancer."""

    temporal: Client
    keyring: Keyring
    task_queue: str
    hosts: dict[str, Path]
    provider_urls: dict[str, str]
    database_url: str
    envs: dict[str, dict[str, str]]
    workers: dict[str, HostProcess]
    apis: dict[str, HostProcess]
    balancer: RoundRobin
    #: the simulators' data directory (their client secret: introspection authenticates)
    simulators_dir: Path

    def inbox(self, email: str) -> list[dict[str, Any]]:
        """Everything the human's channel received, on every host (each writes its own dev inbox)."""
        principal = self.keyring.principal_id(email)
        return [m for d in sorted(set(self.hosts.values())) for m in read_inbox(d / "inbox", principal)]

    async def message(
        self, email: str, match: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = [m for m in self.inbox(email) if match(m)]
            if found:
                return found[-1]
            assert asyncio.get_running_loop().time() < deadline, "no such notification"
            await asyncio.sleep(0.1)

    async def provider_state(self, provider: str) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            return dict((await http.get(f"{self.provider_urls[provider]}/_sim/state")).json())

    async def active(self, provider: str, token: str) -> bool:
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"{self.provider_urls[provider]}/introspect",
                data={"token": token},
                auth=client_auth(self.simulators_dir, provider),
            )
            return bool(r.json()["active"])

    async def identities(self) -> dict[str, set[str]]:
        """activity type -> the worker identities that started it, over every workflow of the queue."""
        seen: dict[str, set[str]] = {}
        async for wf in self.temporal.list_workflows(f"TaskQueue = '{self.task_queue}'"):
            for activity, identity in await activity_runs(self.temporal, wf.id, wf.run_id):
                seen.setdefault(activity, set()).add(identity)
        return seen


async def activity_runs(client: Client, workflow_id: str, run_id: str | None = None) -> list[tuple[str, str]]:
    """(activity type, worker identity) of every activity attempt started in this run's history."""
    scheduled: dict[int, str] = {}
    runs: list[tuple[str, str]] = []
    async for event in client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            scheduled[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.HasField("activity_task_started_event_attributes"):
            attrs = event.activity_task_started_event_attributes
            runs.append((scheduled[attrs.scheduled_event_id], attrs.identity))
    return runs


async def consent_at_provider(authorization_url: str) -> httpx.Response:
    """The human presses Approve on the provider's consent page; the redirect goes to the public URL
    (the load balancer), which hands it to either replica."""
    async with httpx.AsyncClient(follow_redirects=False, timeout=30) as http:
        page = await http.get(authorization_url)
        action = re.search(r'<form[^>]*action="([^"]+)"', page.text)
        target = (
            httpx.URL(authorization_url).join(action.group(1)) if action else httpx.URL(authorization_url)
        )
        fields = dict(HIDDEN.findall(page.text)) | {"decision": "approve"}
        r = await http.post(str(target), data=fields)
        assert r.status_code in (302, 303), r.text[:200]
        return await http.get(r.headers["location"])


async def approve_on_the_pages(link: str, opens_on: str, decides_on: str) -> str:
    """Open the notification's approval link on one replica (a page session cookie), then show the
    page and approve on the other: the session lives in the shared store, not in a replica."""
    url = httpx.URL(link)
    path = url.raw_path.decode()
    async with httpx.AsyncClient(follow_redirects=False, timeout=30) as http:
        opened = await http.get(opens_on + path)
        assert opened.status_code == 303, opened.text[:300]
        assert opened.cookies.get(COOKIE), "no page session cookie"
        page = await http.get(decides_on + opened.headers["location"])
        assert page.status_code == 200, page.text[:300]
        fields = dict(HIDDEN.findall(page.text))
        assert {"csrf", "view_hash"} <= set(fields), page.text[:300]
        done = await http.post(decides_on + opened.headers["location"], data=fields | {"decision": "approve"})
        assert done.status_code == 200 and "Approved" in done.text, done.text[:300]
        return done.text


@asynccontextmanager
async def deployment(
    temporal: Client, keyring: Keyring, base: Path, database_url: str | None
) -> AsyncIterator[Deployment]:
    """PostgreSQL: four hosts, four data directories. SQLite (`database_url` None): one host, one data
    directory and its `quartermaster.sqlite`, shared by the four processes."""
    names = ("worker-a", "worker-b", "api-a", "api-b")
    shared = base / "host"
    hosts = {n: (base / n if database_url else shared) for n in names}
    for d in set(hosts.values()):
        d.mkdir(parents=True, exist_ok=True)
        write_key_file(d / "keys.json", keyring)  # one key file, copied to every host
    lb_port, ports = free_port(), {"api-a": free_port(), "api-b": free_port()}
    public_url = f"http://127.0.0.1:{lb_port}"
    webhook_secret = "whsec_" + secrets.token_hex(16)
    task_queue = f"qm-hosts-{uuid.uuid4().hex[:6]}"
    with ExitStack() as servers:
        stripe_url, provider_urls = servers.enter_context(
            serve_simulators(base / "simulators", public_url, webhook_secret)
        )
        balancer = RoundRobin([f"http://127.0.0.1:{p}" for p in ports.values()])
        servers.enter_context(serve_asgi(balancer, port=lb_port))
        envs = {
            n: server_env(
                data_dir=d,
                keys_file=d / "keys.json",
                temporal_address=temporal.service_client.config.target_host,
                task_queue=task_queue,
                public_url=public_url,
                providers=provider_urls,
                stripe_url=stripe_url,
                webhook_secret=webhook_secret,
                database_url=database_url,
            )
            for n, d in hosts.items()
        }
        apis = {n: start_api(envs[n], n, ports[n]) for n in ("api-a", "api-b")}
        workers = {n: start_worker(envs[n], n) for n in ("worker-a", "worker-b")}
        try:
            for h in (*apis.values(), *workers.values()):
                await asyncio.to_thread(wait_until_ready, h)
            yield Deployment(
                temporal=temporal,
                keyring=keyring,
                task_queue=task_queue,
                hosts=hosts,
                provider_urls=provider_urls,
                database_url=database_url or str(shared / STORE_FILE),
                envs=envs,
                workers=workers,
                apis=apis,
                balancer=balancer,
                simulators_dir=base / "simulators",
            )
        finally:
            for h in (*workers.values(), *apis.values()):
                await asyncio.to_thread(h.stop)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_two_workers_and_two_api_replicas(
    client: Client, keyring: Keyring, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    database_url = request.getfixturevalue("postgres_db") if backend == "postgresql" else None
    async with deployment(client, keyring, tmp_path, database_url) as dep:
        a, b = dep.apis["api-a"].url or "", dep.apis["api-b"].url or ""
        original = {w.identity for w in dep.workers.values()}
        email = new_email()
        # log in on replica A, redeem the code on replica B
        async with QuartermasterClient(a) as anon_a, QuartermasterClient(b) as anon_b:
            started = await anon_a.auth.login(email)
            sent = await dep.message(email, lambda m: m.get("login_id") == started.login_id)
            token = (await anon_b.auth.verify(started.login_id, str(sent["code"]))).token
        on_a = QuartermasterClient(a, human_token=token)
        on_b = QuartermasterClient(b, human_token=token)
        async with on_a, on_b:
            # 1. a new principal: terms (approved on the pages, A then B), then account creation
            first = await on_a.provisions.create(service_id="cloud/workers", name="w1", request_id="hosts-1")
            first = await on_b.provisions.wait("hosts-1", timeout=60)
            assert first.state == "waiting_for_human" and [w.kind for w in first.waiting_for] == ["terms"]
            terms = await dep.message(email, lambda m: m.get("kind") == "terms")
            await approve_on_the_pages(str(terms["link"]), opens_on=a, decides_on=b)
            first = await on_a.provisions.wait("hosts-1", timeout=60)
            assert first.state == "completed" and first.link_action == "created", first
            res1 = first.resource_id or ""
            cred1 = (await on_b.resources.credentials(res1))["CLOUD_API_TOKEN"]

            # 2. a second purchase: no second terms, no consent
            second = await on_b.provisions.create(service_id="cloud/workers", name="w2", request_id="hosts-2")
            second = await on_a.provisions.wait("hosts-2", timeout=60)
            assert second.state == "completed" and second.link_action == "created", second  # the same account
            res2 = second.resource_id or ""
            cred2 = (await on_b.resources.credentials(res2))["CLOUD_API_TOKEN"]

            # 3. rotate (through A), the new credential read through B
            rotated = await on_a.resources.rotate(res1)
            assert rotated.outcome == "completed", rotated
            cred1_new = (await on_b.resources.credentials(res1))["CLOUD_API_TOKEN"]
            assert cred1_new != cred1 and not await dep.active("cloud", cred1)

            # 4. an existing account at `db`, linked by OAuth; the worker that started it dies mid-consent
            async with httpx.AsyncClient() as http:
                seeded = await http.post(f"{dep.provider_urls['db']}/_sim/accounts", json={"email": email})
                assert seeded.status_code < 300
            await on_b.provisions.create(service_id="db/postgres:free", name="pg", request_id="hosts-3")
            linking = await on_a.provisions.wait("hosts-3", timeout=60)
            assert [w.kind for w in linking.waiting_for] == ["oauth_consent"], linking
            wid = f"provision-{keyring.principal_id(email)}-hosts-3"
            (starter,) = {i for act, i in await activity_runs(client, wid) if act == "start_oauth"}
            (dying,) = [w for w in dep.workers.values() if w.identity == starter]
            await asyncio.to_thread(dying.kill)
            (consent,) = [p for p in await on_b.approvals.list() if p.kind == "oauth_consent"]
            landing = await consent_at_provider(str(consent.details["authorization_url"]))
            assert landing.status_code == 200, landing.text[:300]
            linked = await on_b.provisions.wait("hosts-3", timeout=90)
            assert linked.state == "completed" and linked.link_action == "linked_existing", linked
            (finisher,) = {i for act, i in await activity_runs(client, wid) if act == "complete_oauth"}
            assert finisher != starter and finisher in {w.identity for w in dep.workers.values()}
            res3 = linked.resource_id or ""
            cred3 = (await on_a.resources.credentials(res3))["DB_API_TOKEN"]

            # the dead host comes back (same data directory); 5. remove everything, alternating
            name = next(n for n, w in dep.workers.items() if w is dying)
            dep.workers[name] = start_worker(dep.envs[name], name)
            await asyncio.to_thread(wait_until_ready, dep.workers[name])
            for api, rid in ((on_b, res1), (on_a, res2), (on_b, res3)):
                removed = await api.resources.remove(rid)
                assert removed.outcome == "completed", removed
            assert await on_a.approvals.list() == []

        # activities ran on both hosts (the worker identities in the histories)
        seen = await dep.identities()
        everyone = set().union(*seen.values())
        assert original <= everyone, (original, seen)
        assert seen["start_oauth"] == {starter} and seen["complete_oauth"] == {finisher}, seen
        # one account per principal and provider, at the provider
        for provider in ("cloud", "db"):
            state = await dep.provider_state(provider)
            assert len([acct for acct in state["accounts"] if acct["email"] == email]) == 1, (provider, state)
        # every credential revoked, every resource removed
        for provider, cred in (("cloud", cred1), ("cloud", cred1_new), ("cloud", cred2), ("db", cred3)):
            assert not await dep.active(provider, cred), provider
        cloud, db = await dep.provider_state("cloud"), await dep.provider_state("db")
        statuses = {r["resource_id"]: r["status"] for r in cloud["resources"] + db["resources"]}
        assert [statuses[r] for r in (res1, res2, res3)] == ["removed"] * 3
        # nothing asked twice: one terms, one consent, each approval notified once
        asked = [m for m in dep.inbox(email) if m.get("type") == "approval_request"]
        assert sorted(m["kind"] for m in asked) == ["oauth_consent", "terms"], asked
        # the audit chain both hosts wrote verifies
        store = open_store(dep.database_url)
        try:
            report = store.audit.verify()
            assert report.ok and report.records > 0
        finally:
            store.close()
        assert len(dep.balancer.served) == 2  # the callbacks reached both replicas
