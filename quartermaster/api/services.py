"""Everything the API's routes use, built once per process in the app's lifespan (or by a test).

Server side: the Temporal client, the keyring and every signing key live here and in the worker only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temporalio.client import Client

from activities.sessions import SessionActivities
from activities.spend import SpendActivities
from providers.assertions import AssertionSigner
from providers.notifier import Notifier
from providers.registry import ProviderRegistry
from providers.store import Store
from quartermaster.api.logins import LoginStore
from quartermaster.api.page_sessions import PageSessionStore
from quartermaster.config import Settings
from quartermaster.identity.attestation import Attestor
from quartermaster.identity.settings import IdentitySettings
from quartermaster.identity.verification import ReplayGuard
from quartermaster.keys import Keyring
from quartermaster.orchestration.requests import Orchestrator
from quartermaster.orchestration.sessions import SessionService

#: how long the API reuses an active session's and a not-frozen agent's state between an agent's calls
#: (a refusal is never reused; the worker never reuses; the store's freezes and revocations are read
#: on every call: docs/decisions.md)
ENTITY_TTL_SECONDS = 30.0


@dataclass
class ApiServices:
    settings: Settings
    identity: IdentitySettings
    keyring: Keyring
    temporal: Client
    orchestrator: Orchestrator
    sessions: SessionService
    #: verifies agents' identity + session tokens against the live session entities
    presentations: SessionActivities
    spend: SpendActivities
    logins: LoginStore
    notifier: Notifier
    attestor: Attestor
    signer: AssertionSigner
    #: `quartermaster.stripe_webhooks.WebhookInbox`, or None when webhooks are not configured
    webhooks: Any | None
    replay: ReplayGuard
    #: browser sessions of the approval pages (rows in the shared store)
    pages: PageSessionStore
    #: a deliberately broken variant for the attacker suite: every ownership check passes
    authorization_disabled: bool = False


def build_services(
    settings: Settings,
    keyring: Keyring,
    temporal: Client,
    *,
    notifier: Notifier | None = None,
    identity: IdentitySettings | None = None,
    store: Store | None = None,
) -> ApiServices:
    """Wire the API's services from settings (the same adapters the worker builds)."""
    from providers.private_files import private_directory
    from quartermaster.gateway import assertion_signer, build_inbox
    from worker import build_notifier, build_store

    private_directory(settings.data_dir)  # the API holds keys and the store there too
    ids = identity or IdentitySettings.from_env(settings.data_dir)
    registry = ProviderRegistry.from_settings(settings)
    login_key = keyring.principal or b""
    store = store or build_store(settings, keyring)
    return ApiServices(
        settings=settings,
        identity=ids,
        keyring=keyring,
        temporal=temporal,
        orchestrator=Orchestrator(
            temporal=temporal,
            settings=settings,
            keyring=keyring,
            registry=registry,
            pending=store.approvals,
        ),
        sessions=SessionService(temporal=temporal, keyring=keyring, task_queue=settings.task_queue),
        presentations=SessionActivities.from_settings(
            settings,
            keyring,
            temporal,
            identity=ids,
            replay=store.replay,
            entity_ttl_seconds=ENTITY_TTL_SECONDS,
        ),
        spend=SpendActivities(temporal, settings.task_queue, providers=list(settings.providers)),
        logins=LoginStore(store, code_key=login_key),
        notifier=notifier or build_notifier(settings),
        attestor=Attestor.from_settings(ids, create=True, keyring=keyring),
        signer=assertion_signer(settings, keyring),
        webhooks=build_inbox(settings, store=store),
        replay=ReplayGuard.over(store.replay),
        pages=PageSessionStore(store.pages, principal_key=login_key),
    )
