"""The Quartermaster worker: configuration -> Temporal client -> adapters -> Worker. Wiring only.

python worker.py        # connects where temporalio.envconfig points (TEMPORAL_ADDRESS, ...)
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from temporalio.client import Client
from temporalio.worker import Worker

from activities.accounts import AccountActivities
from activities.alerts import AlertActivities
from activities.approvals import ApprovalActivities, LinkBuilder
from activities.audit import AuditActivities
from activities.catalog import CatalogActivities
from activities.heartbeat import HEARTBEAT_THROTTLE, HeartbeatInterceptor
from activities.payment import PaymentActivities
from activities.renewals import RenewalActivities
from activities.resources import ResourceActivities
from activities.session_revocation import (
    ConnectionStoreAccounts,
    RegistryCredentialRevoker,
    SessionRevocationActivities,
)
from activities.sessions import SessionActivities
from activities.spend import SpendActivities
from models.approval import ApprovalRequest
from models.provisioning import Policy
from providers.email_notifier import SmtpNotifier
from providers.notifier import (
    FanoutNotifier,
    InboxNotifier,
    Notifier,
    NotifierConfigError,
    WebhookNotifier,
)
from providers.private_files import private_directory
from providers.registry import ProviderRegistry
from providers.store import Store, open_store
from providers.stripe_adapter import StripeAdapter
from quartermaster.codec import SecretBox
from quartermaster.config import Settings
from quartermaster.crypto.authority import AuthoritySigner
from quartermaster.deployment_keys import start_or_refuse
from quartermaster.gateway import assertion_signer
from quartermaster.http_transport import close_pooled_connections
from quartermaster.identity.approval_links import ApprovalLinkSealer
from quartermaster.keys import Keyring, load_keyring
from quartermaster.logging_setup import configure_logging, quiet_http_client_logs
from quartermaster.temporal import connect
from quartermaster.workflow_runner import workflow_runner
from workflows import authority as workflow_authority
from workflows.agent_freeze import AgentWorkflow
from workflows.books import SpendBooksWorkflow
from workflows.ledger import SpendLedgerWorkflow
from workflows.limits import LimitChangeWorkflow, PrincipalLimitsWorkflow
from workflows.link import LinkAccountWorkflow
from workflows.plan_change import PlanChangeWorkflow
from workflows.provision import ProvisionWorkflow
from workflows.renewal import RenewalWorkflow
from workflows.resource_actions import RemoveResourceWorkflow, RotateCredentialWorkflow
from workflows.session import SessionWorkflow

log = logging.getLogger("quartermaster.worker")


def build_notifier(settings: Settings) -> Notifier:
    """The human's channels: e-mail (QM_SMTP_HOST) and/or the signed webhook; the console + inbox
    file only in dev (then it also shows what every other channel sent). Approval codes never go to
    stdout outside dev, so without a channel the worker refuses to start."""
    channels: list[Notifier] = []
    if settings.smtp_host:
        channels.append(
            SmtpNotifier(
                host=settings.smtp_host,
                port=settings.smtp_port,
                tls=settings.smtp_tls,  # type: ignore[arg-type]  # validated by SmtpNotifier
                sender=settings.smtp_sender,
                username=settings.smtp_username,
                password=settings.smtp_password,
            )
        )
    if settings.notify_webhook_url:
        channels.append(
            WebhookNotifier(url=settings.notify_webhook_url, secret=settings.notify_webhook_secret or "")
        )
    if settings.dev:
        channels.append(InboxNotifier(inbox_dir=settings.data_dir / "inbox"))
    if not channels:
        raise NotifierConfigError(
            "no notification channel: set QM_SMTP_HOST, or QM_NOTIFY_WEBHOOK_URL and "
            "QM_NOTIFY_WEBHOOK_SECRET (QM_DEV=1 uses the local inbox)"
        )
    return channels[0] if len(channels) == 1 else FanoutNotifier(*channels)


def approval_link_builder(settings: Settings, keyring: Keyring) -> LinkBuilder | None:
    """Links to the API's approval page, carrying a sealed, single-use stand-in for the code."""
    if keyring.principal is None:
        return None
    sealer = ApprovalLinkSealer(principal_key=keyring.principal)
    ttl = timedelta(seconds=settings.approval_link_ttl_seconds)
    base = settings.public_url.rstrip("/")

    def link_for(req: ApprovalRequest, code: str) -> str:
        expires = min(req.expires_at, datetime.now(UTC) + ttl)
        token = sealer.seal(
            approval_id=req.approval_id, principal_id=req.principal_id, code=code, expires_at=expires
        )
        return f"{base}/approve/{quote(req.approval_id, safe='')}?t={token}"

    return link_for


def build_store(settings: Settings, keyring: Keyring) -> Store:
    """The one store (QM_DATABASE_URL), with the seal key for account credentials."""
    return open_store(settings.resolved_database_url, sealer=SecretBox(keyring))


def build_activities(
    settings: Settings, keyring: Keyring, client: Client, store: Store | None = None
) -> list[Callable[..., Any]]:
    """Every activity, bound to adapters built from `settings`. Secrets stay in this process."""
    private_directory(settings.data_dir)
    authority = AuthoritySigner.from_keyring(keyring)
    store = store or build_store(settings, keyring)
    approvals = ApprovalActivities(
        build_notifier(settings),
        authority=authority,
        link_for=approval_link_builder(settings, keyring),
        pending=store.approvals,
    )
    registry = ProviderRegistry.from_settings(settings)
    stripe = StripeAdapter(
        api_key=settings.stripe_api_key,
        base_url=settings.stripe_base_url if settings.stripe_is_local else None,
    )
    policy = Policy(
        approval_timeout_seconds=settings.approval_timeout_seconds,
        purchase_approval_above=settings.purchase_approval_above,
        public_url=settings.public_url,
        renewal_notice_seconds=settings.renewal_notice_seconds,
        renewal_grace_seconds=settings.renewal_grace_seconds,
    )
    catalog = CatalogActivities(registry, policy)
    accounts = AccountActivities(
        registry=registry,
        store=store.connections,
        signer=assertion_signer(settings, keyring),
        public_url=settings.public_url,
    )
    payment = PaymentActivities(stripe=stripe, public_url=settings.public_url)
    resources = ResourceActivities(registry=registry, store=store.connections)
    spend = SpendActivities(
        client,
        settings.task_queue,
        authority=authority,
        providers=list(settings.providers),
        books=settings.spend_books,
    )
    alerts = AlertActivities(build_notifier(settings))
    revoker = RegistryCredentialRevoker(
        registry=registry, accounts=ConnectionStoreAccounts(store.connections)
    )
    sessions = SessionActivities.from_settings(
        settings, keyring, client, revoker=revoker, replay=store.replay
    )
    session_revocation = SessionRevocationActivities(client=client, revoker=revoker)
    audit = AuditActivities(store.audit)
    renewals = RenewalActivities(
        client=client,
        task_queue=settings.task_queue,
        registry=registry,
        store=store.connections,
        notifier=build_notifier(settings),
        authority=authority,
    )
    return [
        audit.record,
        audit.record_batch,
        *sessions.all(),
        *session_revocation.all(),
        approvals.notify_approval,
        approvals.close_approval,
        catalog.discover,
        catalog.load_policy,
        accounts.find_connection,
        accounts.lookup_account,
        accounts.terms_accepted,
        accounts.create_account,
        accounts.start_oauth,
        accounts.complete_oauth,
        payment.resolve_customer,
        payment.payment_method_status,
        payment.create_setup_session,
        payment.issue_payment_token,
        payment.revoke_payment_token,
        payment.refund_charge,
        resources.create_resource,
        resources.resource_ready,
        resources.submit_information,
        resources.remove_resource,
        resources.mint_credential,
        resources.revoke_credential,
        spend.reserve_spend,
        spend.commit_spend,
        spend.release_spend,
        spend.spend_view,
        spend.set_spend_limit,
        alerts.spend_alert,
        renewals.renew_resource,
        renewals.renewal_notice,
        renewals.start_renewal,
        renewals.cancel_renewal,
        renewals.open_layers,
        renewals.change_plan,
        renewals.renewal_view,
        renewals.plan_changed,
    ]


def workflow_classes() -> Sequence[type]:
    return [
        ProvisionWorkflow,
        LinkAccountWorkflow,
        RemoveResourceWorkflow,
        RotateCredentialWorkflow,
        SpendLedgerWorkflow,
        SpendBooksWorkflow,
        PrincipalLimitsWorkflow,
        LimitChangeWorkflow,
        SessionWorkflow,
        AgentWorkflow,
        RenewalWorkflow,
        PlanChangeWorkflow,
    ]


#: deterministic, side-effect-free modules the workflow sandbox may share instead of re-importing
PASSTHROUGH = (
    "models",
    "pydantic",
    "pydantic_core",
    "email_validator",
    "idna",
    "annotated_types",
    # stateless helpers the workflows import: shared, not re-imported for every new workflow
    "workflows.approval_gate",
    "workflows.audit_trail",
    # holds the verification keys installed below: one instance for every workflow of the process
    "workflows.authority",
    "workflows.search_attributes",
)


#: a dead worker's sticky queue is given up after this long (the SDK's default is 10 s): a restarted
#: worker picks up the workflows of the one that died sooner
STICKY_SCHEDULE_TO_START = timedelta(seconds=3)


def build_worker(
    client: Client, settings: Settings, keyring: Keyring, store: Store | None = None, **options: Any
) -> Worker:
    """The worker, with the workflows' authority-proof verification keys installed first."""
    workflow_authority.install(keyring.authority_keys())
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=workflow_classes(),
        activities=build_activities(settings, keyring, client, store),
        **worker_options(**options),
    )


def worker_options(**options: Any) -> dict[str, Any]:
    """The worker's options beside its queue, workflows and activities; `options` override them."""
    options["interceptors"] = [HeartbeatInterceptor(), *options.get("interceptors", [])]
    options.setdefault("sticky_queue_schedule_to_start_timeout", STICKY_SCHEDULE_TO_START)
    options.setdefault("max_heartbeat_throttle_interval", HEARTBEAT_THROTTLE)
    options.setdefault("workflow_runner", workflow_runner(PASSTHROUGH))
    return options


async def main() -> None:
    configure_logging(logging.INFO)
    quiet_http_client_logs()
    settings = Settings.from_env()
    keyring = load_keyring(settings.resolved_keys_file, create=settings.dev)
    log.info("configuration: %s", settings.describe())
    try:
        build_notifier(settings)  # refuse to start, before connecting, when there is no safe channel
    except NotifierConfigError as exc:
        log.error("not starting: %s", exc)
        raise SystemExit(2) from None
    private_directory(settings.data_dir)
    store = build_store(settings, keyring)
    # refuse to start, before connecting, when this host's keys are not the deployment's
    start_or_refuse(store, keyring, role="worker")
    client = await connect(settings, keyring)
    worker = build_worker(client, settings, keyring, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        log.info("worker polling task queue %r", settings.task_queue)
        await stop.wait()
        log.info("shutting down: finishing in-flight activities")
    await close_pooled_connections()


if __name__ == "__main__":
    asyncio.run(main())
