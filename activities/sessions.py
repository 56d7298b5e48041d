"""Session enforcement: verify an actor's identity + session tokens, answer what it may do, sign tokens.

`authorize_actor` is the enforcement point the provisioning, remove and rotate workflows call first.
An agent must present a session: it verifies the agent identity token (attestor signature, audience,
expiry, replay), the session token (Quartermaster's signature, expiry) and that the session is bound
to that very identity, then asks the session entities (root to leaf) and the agent entities whether
anything was revoked, expired or frozen. A logged-in human's own request instead carries the API's
authority proof over its email, request and service. Nothing else is allowed (there is no mode where
a caller's claimed email is believed). Refusals are answers (`Authorization.allowed = False` with an
ErrorCode), not exceptions. The signing and verification keys all come from the server's key file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from temporalio import activity
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.session_revocation import CredentialRevoker
from activities.spend import SpendActivities, signed_at
from models.authority import ProofKind, change_of
from models.errors import ErrorCode, QuartermasterError
from models.money import Money
from models.secret import Secret
from models.session import (
    LIVE_MEMO,
    MAX_LIVE_CREDENTIALS,
    AgentStatus,
    Authorization,
    AuthorizationRequest,
    DelegationCheck,
    DelegationCheckResult,
    RecordCredential,
    SessionState,
    SessionTokenRequest,
    SignedSessionToken,
    agent_workflow_id,
    session_workflow_id,
)
from providers.store.interfaces import ReplayStore
from quartermaster.config import Settings
from quartermaster.crypto.authority import AuthoritySigner, human_actor_change, verify_proof
from quartermaster.identity.attenuation import services_allowed
from quartermaster.identity.attestation import spiffe_id
from quartermaster.identity.keys import SigningKeys
from quartermaster.identity.settings import IdentitySettings
from quartermaster.identity.tokens import SessionClaims, SessionTokens
from quartermaster.identity.verification import IdentityVerifier, ReplayGuard, VerifiedIdentity
from quartermaster.keys import Keyring
from workflows.search_attributes import QM_STATE

T = TypeVar("T")


@dataclass(frozen=True)
class VerifiedPresentation:
    identity: VerifiedIdentity
    claims: SessionClaims
    #: the session entities, root first
    states: list[SessionState]


def _layer(state: SessionState) -> dict[str, object]:
    """A `models.ledger.LedgerLayer`-shaped dict for one session's budget."""
    return {
        "ledger_id": state.budget_ledger_id,
        "limit": state.grant.budget.model_dump(mode="json"),
        "kind": "budget",
    }


#: sessions whose fixed part one process keeps (`SessionActivities.live_session`), the oldest dropped
MAX_FIXED_SESSIONS = 10_000
#: the entity answers an API process reuses (`entity_ttl_seconds`) at most
MAX_CACHED_ENTITIES = 10_000


def _active(state: SessionState | None) -> bool:
    return state is not None and state.status == "active"


def _not_frozen(status: AgentStatus) -> bool:
    return not status.frozen


async def _live_memo(desc: WorkflowExecutionDescription) -> dict[str, Any] | None:
    """The session's live facts from a describe, or None when it is not running or has none."""
    if desc.status != WorkflowExecutionStatus.RUNNING:
        return None
    try:
        live = (await desc.memo()).get(LIVE_MEMO)
    except Exception:  # a memo this code cannot read: the query decides
        return None
    return live if isinstance(live, dict) else None


class SessionActivities:
    """Activities over the Temporal client (to query session and agent entities) and the token keys."""

    def __init__(
        self,
        *,
        client: Client,
        keyring: Keyring,
        verifier: IdentityVerifier,
        tokens: SessionTokens,
        revoker: CredentialRevoker | None = None,
        entity_ttl_seconds: float = 0.0,
    ) -> None:
        self._client = client
        self._keyring = keyring
        self._verifier = verifier
        self._tokens = tokens
        self._revoker = revoker
        self._authority = AuthoritySigner.from_keyring(keyring)
        #: the API only (0 in the worker): reuse a session's / agent's state for this long; the kill
        #: switch stays immediate because the API reads the store's freezes and revocations each call
        self._entity_ttl = entity_ttl_seconds
        self._entities: dict[str, tuple[float, Any]] = {}
        #: session id -> (its first run's id, its state when a query found it active, credentials left
        #: out): the part that never changes once a session is active (`live_session`)
        self._fixed: dict[str, tuple[str, SessionState]] = {}

    def identity_jwks(self) -> dict[str, Any]:
        """The public keys agent identity tokens of the local attestor are verified with."""
        return self._verifier.local_jwks()

    def session_jwks(self) -> dict[str, Any]:
        """The public keys session tokens are verified with."""
        return self._tokens.keys.jwks()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        keyring: Keyring,
        client: Client,
        *,
        revoker: CredentialRevoker | None = None,
        identity: IdentitySettings | None = None,
        replay: ReplayStore | None = None,
        entity_ttl_seconds: float = 0.0,
    ) -> SessionActivities:
        """Keys from the key file (attestor and session sections), trust from the environment (see
        quartermaster.identity.settings): every replica given the same key file verifies the same.
        `replay` is the store's replay guard (default: the store `ids.replay_db` names)."""
        ids = identity or IdentitySettings.from_env(settings.data_dir)
        local: SigningKeys | None
        if ids.attestor_keys_json:
            local = SigningKeys.from_json(ids.attestor_keys_json)
        elif keyring.attestor is not None:
            local = keyring.signing_keys("attestor")
        else:
            local = None  # no local attestor on this deployment: only trusted external attestors
        verifier = IdentityVerifier(
            trust_domain=ids.trust_domain,
            local_issuer=ids.issuer,
            local_keys=local,
            trusted=ids.trusted_attestors,
            replay=replay if replay is not None else ReplayGuard(ids.replay_db),
        )
        tokens = SessionTokens(keys=keyring.signing_keys("session"), issuer=ids.session_issuer)
        return cls(
            client=client,
            keyring=keyring,
            verifier=verifier,
            tokens=tokens,
            revoker=revoker,
            entity_ttl_seconds=entity_ttl_seconds,
        )

    def all(self) -> list[Callable[..., Any]]:
        """Every activity of this class, for the worker."""
        return [self.authorize_actor, self.record_credential, self.sign_session_token, self.check_delegation]

    # ---- entity lookups -------------------------------------------------------------------------
    async def _cached(self, key: str, load: Callable[[], Awaitable[T]], keep: Callable[[T], bool]) -> T:
        """`load()`, or its answer from less than `entity_ttl_seconds` ago. Only answers `keep`
        accepts are reused: an active session, an agent that is not frozen. A refusal is read again on
        every call, so an unfrozen agent is let in at once; a revocation or a freeze since is the
        store's to catch (the API reads it on every call) and the worker's (it never reuses)."""
        if self._entity_ttl <= 0:
            return await load()
        now = time.monotonic()
        hit = self._entities.get(key)
        if hit is not None and now - hit[0] < self._entity_ttl:
            value: T = hit[1]
            return value
        fresh = await load()
        if not keep(fresh):
            self._entities.pop(key, None)
            return fresh
        if len(self._entities) >= MAX_CACHED_ENTITIES:  # bounded: drop what is stale, else the oldest
            self._entities = {k: v for k, v in self._entities.items() if now - v[0] < self._entity_ttl}
            while len(self._entities) >= MAX_CACHED_ENTITIES:
                del self._entities[next(iter(self._entities))]
        self._entities[key] = (now, fresh)
        return fresh

    async def session_state(self, session_id: str) -> SessionState | None:
        """The session entity's state, or None when there is no such session."""
        handle = self._client.get_workflow_handle(session_workflow_id(session_id))
        try:
            state: SessionState = await handle.query("state", result_type=SessionState)
            return state
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                return None
            raise

    async def live_session(self, session_id: str) -> SessionState | None:
        """The session's state as a verifier needs it, read as cheaply as it can be read exactly.

        A describe (the server answers from the workflow's mutable state; no workflow task, no
        query) gives the run status and the memo the session keeps in step with its state
        (`LIVE_MEMO`, written in the same workflow task as each change). While the session is running,
        says it is active and holds fewer than `NEAR_CREDENTIAL_LIMIT` live credentials, and this
        process already saw its fixed part (agent, chain, grant, ancestors) in a query of the same
        first run, that fixed part is the answer, with no credentials listed (fewer than the limit).
        Anything else (an older session without the memo, a closed or reset one, one near the
        credential limit, a first sight) is the query, exactly as before."""
        handle = self._client.get_workflow_handle(session_workflow_id(session_id))
        try:
            desc = await handle.describe()
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                return None
            raise
        live = await _live_memo(desc)
        first_run = desc.raw_description.workflow_execution_info.first_run_id
        fixed = self._fixed.get(session_id)
        if (
            live is not None
            and live.get("status") == "active"
            and live.get("near_credential_limit") is False
            and fixed is not None
            and fixed[0] == first_run
        ):
            return fixed[1]
        state = await self.session_state(session_id)
        if state is not None and state.status == "active" and live is not None and first_run:
            if len(self._fixed) >= MAX_FIXED_SESSIONS:
                del self._fixed[next(iter(self._fixed))]  # the oldest first
            self._fixed[session_id] = (first_run, state.model_copy(update={"credentials": []}))
        return state

    async def agent_status(self, principal_id: str, agent: str) -> AgentStatus:
        """The agent entity's status (never registered: not frozen)."""
        return await self._cached(
            f"a:{principal_id}:{agent}", lambda: self._agent_status(principal_id, agent), _not_frozen
        )

    async def _agent_status(self, principal_id: str, agent: str) -> AgentStatus:
        """A describe first: the agent entity sets its search attribute `QmState` to FROZEN in the same
        workflow task as the freeze (and to ACTIVE only once unfrozen), so a running entity showing
        ACTIVE is not frozen. Anything else (FROZEN, not yet set, closed) is the query."""
        handle = self._client.get_workflow_handle(agent_workflow_id(principal_id, agent))
        try:
            desc = await handle.describe()
            if (
                desc.status == WorkflowExecutionStatus.RUNNING
                and desc.typed_search_attributes.get(QM_STATE) == "ACTIVE"
            ):
                return AgentStatus(agent=agent)
            status: AgentStatus = await handle.query("status", result_type=AgentStatus)
            return status
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                return AgentStatus(agent=agent)  # never registered, never frozen
            raise

    async def _remaining(self, ledger_id: str, budget: Money, principal_id: str) -> Money:
        """What is left of a budget: its limit minus what its book or ledger has committed or reserved."""
        # read-only (no authority key): the layer's book, else its ledger
        view = await SpendActivities(self._client, "").ledger_view(ledger_id, principal_id)
        if view is None:
            return budget  # no purchase yet
        used = view.committed.amount + view.reserved.amount
        return Money(amount=max(budget.amount - used, 0), currency=budget.currency)

    # ---- verification ---------------------------------------------------------------------------
    async def verify_presentation(
        self, session_token: Secret, identity_token: Secret, *, use_id: str | None = None
    ) -> VerifiedPresentation:
        """Identity token, session token, binding, and the live status of every session in the chain
        and of every agent in it. Raises QuartermasterError with the refusal's code."""
        identity = await self._verifier.verify(identity_token.reveal(), use_id=use_id)
        claims = self._tokens.verify(session_token.reveal())
        if claims.agent_identity != identity.spiffe_id:
            raise QuartermasterError(ErrorCode.SESSION_INVALID, "the session is bound to another agent")
        if identity.bound_session is not None and identity.bound_session != claims.session_id:
            raise QuartermasterError(
                ErrorCode.SESSION_INVALID, "the identity was attested for another session"
            )
        ids = [*claims.ancestors, claims.session_id]
        found = await asyncio.gather(
            *(self._cached(f"s:{sid}", partial(self.live_session, sid), _active) for sid in ids)
        )
        if any(state is None or state.session_id != sid for sid, state in zip(ids, found, strict=True)):
            raise QuartermasterError(ErrorCode.SESSION_INVALID, "unknown session")
        states = [s for s in found if s is not None]
        leaf = states[-1]
        if leaf.agent_identity != identity.spiffe_id or leaf.chain_identities != claims.chain_identities:
            raise QuartermasterError(ErrorCode.SESSION_INVALID, "the token does not match the session")
        if leaf.principal_id != claims.principal_id:
            raise QuartermasterError(ErrorCode.SESSION_INVALID, "the token does not match the session")
        # the kill switch first: a frozen agent's sessions are also revoked, but the cause is the freeze
        agents = await asyncio.gather(
            *(self.agent_status(leaf.principal_id, a) for a in dict.fromkeys(leaf.chain))
        )  # agent_status reuses its own answers
        for status in agents:
            if status.frozen:
                raise QuartermasterError(ErrorCode.AGENT_FROZEN, f"agent {status.agent} is frozen")
        now = datetime.now(UTC)
        for state in states:
            sid = state.session_id
            if state.status == "revoked":
                raise QuartermasterError(ErrorCode.SESSION_REVOKED, f"session {sid} has been revoked")
            if state.status == "expired" or state.grant.expires_at <= now:
                raise QuartermasterError(ErrorCode.SESSION_EXPIRED, f"session {sid} has expired")
            if state.status != "active":
                raise QuartermasterError(ErrorCode.SESSION_INVALID, f"session {sid} is {state.status}")
        return VerifiedPresentation(identity=identity, claims=claims, states=states)

    # ---- activities -----------------------------------------------------------------------------
    @activity.defn(name="authorize_actor")
    async def authorize_actor(self, req: AuthorizationRequest) -> Authorization:
        """May this actor do `req.action` on `req.service_id` (for `req.amount`)? Never raises a
        refusal: the answer carries `allowed`, an ErrorCode and the reason."""
        actor = req.actor
        principal_id = self._keyring.principal_id(str(actor.principal_email))

        def refuse(code: ErrorCode, reason: str, chain: list[str] | None = None) -> Authorization:
            return Authorization(
                allowed=False,
                code=str(code),
                reason=reason,
                principal_id=principal_id,
                agent_chain=chain or [],
            )

        info = activity.info()
        use_id = f"{info.workflow_id}:{info.activity_id}"
        try:
            if actor.session_token is None:
                return self._authorize_human(req, principal_id)
            if actor.identity_token is None:
                return refuse(ErrorCode.IDENTITY_INVALID, "a session token needs the agent's identity token")
            seen = await self.verify_presentation(actor.session_token, actor.identity_token, use_id=use_id)
        except QuartermasterError as err:
            return refuse(err.code, err.message, [actor.agent])
        leaf = seen.states[-1]
        chain = leaf.chain
        if leaf.principal_id != principal_id:
            return refuse(ErrorCode.SESSION_INVALID, "the session belongs to another principal", chain)
        if seen.identity.agent != actor.agent:
            return refuse(ErrorCode.IDENTITY_INVALID, "the identity token is for another agent", chain)
        if not all(services_allowed(s.grant.allowed_services, req.service_id) for s in seen.states):
            return refuse(
                ErrorCode.SERVICE_NOT_ALLOWED, f"the session does not allow {req.service_id}", chain
            )
        if req.amount is not None:
            if req.amount.currency != leaf.grant.budget.currency:
                return refuse(
                    ErrorCode.CURRENCY_MISMATCH, "the amount's currency differs from the budget's", chain
                )
            if req.amount.amount > min(s.grant.budget.amount for s in seen.states):
                return refuse(ErrorCode.BUDGET_EXCEEDED, "the amount exceeds the session's budget", chain)
        now = datetime.now(UTC)
        if req.action in ("provision", "rotate") and len(leaf.live_credentials(now)) >= MAX_LIVE_CREDENTIALS:
            # refused before any money moves: the session could not record the new credential
            return refuse(
                ErrorCode.CREDENTIAL_LIMIT_EXCEEDED,
                f"the session already holds {MAX_LIVE_CREDENTIALS} live provider credentials",
                chain,
            )
        remaining = int((leaf.grant.expires_at - now).total_seconds())
        return Authorization(
            allowed=True,
            principal_id=principal_id,
            agent_chain=chain,
            session_ids=leaf.session_ids,
            budget_layers=[_layer(s) for s in seen.states],
            max_credential_ttl_seconds=max(remaining, 0),
            allowed_scopes=None if leaf.grant.allowed_scopes is None else list(leaf.grant.allowed_scopes),
            agent_identity=seen.identity.spiffe_id,
        )

    def _authorize_human(self, req: AuthorizationRequest, principal_id: str) -> Authorization:
        """A logged-in human's own request: allowed only with the API's proof over exactly this email,
        request and service (the API signs it after verifying the human's login token)."""
        actor = req.actor
        if actor.kind != "human":
            raise QuartermasterError(
                ErrorCode.SESSION_REQUIRED, "an agent needs a session (qm run --session ...)"
            )
        if req.request_id is None or not verify_proof(
            self._keyring.authority_keys(),
            actor.proof,
            kind=ProofKind.HUMAN_ACTOR,
            target=req.request_id,
            change=human_actor_change(actor, request_id=req.request_id, service_id=req.service_id),
        ):
            raise QuartermasterError(ErrorCode.UNAUTHENTICATED, "a human's request needs the API's proof")
        return Authorization(allowed=True, principal_id=principal_id, agent_chain=[actor.agent])

    @activity.defn(name="record_credential")
    async def record_credential(self, rec: RecordCredential) -> None:
        """Record a credential minted under a session. If the session closed meanwhile (or holds its
        maximum of live credentials), revoke the credential at once and fail non-retryably with
        SESSION_REVOKED (or CREDENTIAL_LIMIT_EXCEEDED): it must not outlive the session unrecorded."""
        handle = self._client.get_workflow_handle(session_workflow_id(rec.session_id))
        code = ErrorCode.SESSION_REVOKED
        message = "the session is no longer active; the credential was revoked"
        try:
            await handle.execute_update("record_credential", rec)
            return
        except WorkflowUpdateFailedError as exc:
            if getattr(exc.cause, "type", None) == str(ErrorCode.CREDENTIAL_LIMIT_EXCEEDED):
                code = ErrorCode.CREDENTIAL_LIMIT_EXCEEDED
                message = "the session holds its maximum of live credentials; the credential was revoked"
        except RPCError as exc:
            if exc.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                raise
        if self._revoker is not None:
            await self._revoker.revoke(
                provider=rec.provider, account_ref=rec.account_ref, credential_id=rec.credential_id
            )
        raise ApplicationError(message, type=str(code), non_retryable=True)

    @activity.defn(name="sign_session_token")
    async def sign_session_token(self, req: SessionTokenRequest) -> SignedSessionToken:
        """The session token; for a delegation also the proof the child session's start needs."""
        start_proof: str | None = None
        if req.state is not None:
            if req.state.session_id != req.session_id:
                raise ApplicationError(
                    "the state names another session", type=str(ErrorCode.INVALID_REQUEST), non_retryable=True
                )
            start_proof = self._authority.sign(
                ProofKind.SESSION_DELEGATED,
                session_workflow_id(req.session_id),
                change_of(req.state),
                issued_at=signed_at(),
            )
        return SignedSessionToken(token=self._tokens.issue(req), start_proof=start_proof)

    @activity.defn(name="check_delegation")
    async def check_delegation(self, req: DelegationCheck) -> DelegationCheckResult:
        """The delegating agent holds this very session (identity + token); the target is not frozen;
        how much of the parent's budget is left."""
        info = activity.info()
        try:
            seen = await self.verify_presentation(
                req.session_token, req.identity_token, use_id=f"{info.workflow_id}:{info.activity_id}"
            )
            if seen.claims.session_id != req.session_id:
                raise QuartermasterError(ErrorCode.SESSION_INVALID, "the token is for another session")
            if (await self.agent_status(seen.claims.principal_id, req.to_agent)).frozen:
                raise QuartermasterError(ErrorCode.AGENT_FROZEN, f"agent {req.to_agent} is frozen")
        except QuartermasterError as err:
            return DelegationCheckResult(ok=False, code=str(err.code), reason=err.message)
        remaining = await self._remaining(req.budget_ledger_id, req.budget, seen.claims.principal_id)
        return DelegationCheckResult(
            ok=True,
            parent_remaining=remaining,
            to_agent_identity=spiffe_id(self._verifier.trust_domain, req.to_agent),
        )
