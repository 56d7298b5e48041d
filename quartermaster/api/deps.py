"""Who is calling: the verified caller, as FastAPI security dependencies every router declares.

- an **agent** presents `Authorization: Bearer <session token>` and `X-QM-Identity: <identity token>`;
  both are verified here (signatures, expiry, binding, the live session chain, the kill switch) and
  again by the worker when a workflow acts on them;
- a **human** presents `Authorization: Bearer qmh_…`, a login token from `qm login`;
- anyone else is anonymous: catalog and quotes only.

The principal always comes from what was verified, never from a field of the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from models.errors import ErrorCode, QuartermasterError
from models.request import Actor
from models.secret import Secret
from quartermaster.api.logins import TOKEN_PREFIX
from quartermaster.api.services import ApiServices

IDENTITY_HEADER = "X-QM-Identity"
#: the agent name of a human's own request (no session); never a session's agent
HUMAN_AGENT = "human"
_bearer = HTTPBearer(auto_error=False, description="a human login token (qmh_…) or an agent's session token")


@dataclass(frozen=True)
class Human:
    principal_id: str
    email: str

    kind = "human"


@dataclass(frozen=True)
class Agent:
    principal_id: str
    email: str
    agent: str
    agent_identity: str
    #: the agent's session and its ancestors, root first
    session_ids: tuple[str, ...]
    chain: tuple[str, ...]
    session_token: Secret
    identity_token: Secret

    kind = "agent"

    @property
    def session_id(self) -> str:
        return self.session_ids[-1]


Caller = Human | Agent


def actor_of(caller: Caller) -> Actor:
    """The actor a workflow will verify again: an agent's own tokens, or the human with no session (the
    Orchestrator signs that one with the server-side key before it reaches a workflow)."""
    if isinstance(caller, Agent):
        return Actor(
            principal_email=caller.email,
            agent=caller.agent,
            session_token=caller.session_token,
            identity_token=caller.identity_token,
        )
    return Actor(principal_email=caller.email, agent=HUMAN_AGENT)


def services(request: Request) -> ApiServices:
    svc: ApiServices = request.app.state.services
    return svc


Services = Annotated[ApiServices, Depends(services)]


async def optional_caller(
    svc: Services,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    identity: Annotated[str | None, Header(alias=IDENTITY_HEADER, include_in_schema=True)] = None,
) -> Caller | None:
    """The verified caller, or None when no credentials were presented. Bad credentials are refused."""
    if credentials is None:
        if identity:
            raise QuartermasterError(ErrorCode.UNAUTHENTICATED, "an identity token needs a session token")
        return None
    token = credentials.credentials.strip()
    if token.startswith(TOKEN_PREFIX):
        login = await svc.logins.human(token)
        if login is None:
            raise QuartermasterError(ErrorCode.UNAUTHENTICATED, "the login token is unknown or expired")
        return Human(principal_id=login.principal_id, email=login.email)
    if not identity:
        raise QuartermasterError(ErrorCode.UNAUTHENTICATED, f"an agent presents its {IDENTITY_HEADER} token")
    return await _verify_agent(svc, Secret(token), Secret(identity.strip()))


async def _verify_agent(svc: ApiServices, session: Secret, identity: Secret) -> Agent:
    try:
        seen = await svc.presentations.verify_presentation(session, identity)
    except QuartermasterError as err:
        if err.code in (ErrorCode.AGENT_FROZEN, ErrorCode.SESSION_REVOKED, ErrorCode.SESSION_EXPIRED):
            raise
        raise QuartermasterError(ErrorCode.UNAUTHENTICATED, err.message) from None
    leaf = seen.states[-1]
    if seen.identity.issuer == svc.attestor.issuer and seen.identity.bound_session != leaf.session_id:
        # this API's own attestations are always bound to the session they were made for
        raise QuartermasterError(ErrorCode.UNAUTHENTICATED, "the identity was attested for another session")
    session_ids = tuple(s.session_id for s in seen.states)
    # the API's own record: a reset workflow cannot bring back a revoked session or a frozen agent
    standing = await svc.logins.standing(
        leaf.principal_id, list(session_ids), list(dict.fromkeys(leaf.chain))
    )
    if standing.revoked_sessions:
        raise QuartermasterError(ErrorCode.SESSION_REVOKED, "the session has been revoked")
    if standing.frozen_agents:
        raise QuartermasterError(ErrorCode.AGENT_FROZEN, f"agent {standing.frozen_agents[0]} is frozen")
    email = await svc.logins.email_of(leaf.principal_id)
    if email is None:
        raise QuartermasterError(ErrorCode.UNAUTHENTICATED, "the session's principal is unknown here")
    return Agent(
        principal_id=leaf.principal_id,
        email=email,
        agent=seen.identity.agent,
        agent_identity=seen.identity.spiffe_id,
        session_ids=session_ids,
        chain=tuple(leaf.chain),
        session_token=session,
        identity_token=identity,
    )


async def require_caller(caller: Annotated[Caller | None, Depends(optional_caller)]) -> Caller:
    if caller is None:
        raise QuartermasterError(ErrorCode.UNAUTHENTICATED, "log in (qm login) or run under qm run")
    return caller


async def require_human(caller: Annotated[Caller, Depends(require_caller)]) -> Human:
    if not isinstance(caller, Human):
        raise QuartermasterError(ErrorCode.FORBIDDEN, "only the human principal may do this")
    return caller


async def require_agent(caller: Annotated[Caller, Depends(require_caller)]) -> Agent:
    if not isinstance(caller, Agent):
        raise QuartermasterError(ErrorCode.FORBIDDEN, "only an agent under a session may do this")
    return caller


AnyCaller = Annotated[Caller, Depends(require_caller)]
MaybeCaller = Annotated[Caller | None, Depends(optional_caller)]
HumanCaller = Annotated[Human, Depends(require_human)]
AgentCaller = Annotated[Agent, Depends(require_agent)]
