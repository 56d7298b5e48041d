"""Agent identities for `qm run`: the API attests a measured process and binds it to a session.

The attestor key never leaves the server. A human may attest a process for one of their own active
sessions; an agent only for a session delegated from its own (a sub-agent it starts)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Security

from models.api import AttestBody, AttestResult, RetireBody
from models.errors import ErrorCode, QuartermasterError
from quartermaster.api.deps import Agent, AnyCaller, Services, require_caller
from quartermaster.api.errors import ERROR_RESPONSES
from quartermaster.identity.attestation import Measurement
from quartermaster.identity.settings import MAX_IDENTITY_TTL_SECONDS

router = APIRouter(
    prefix="/v1/identities",
    tags=["identities"],
    dependencies=[Security(require_caller)],
    responses=ERROR_RESPONSES,
)


@router.post("", response_model=AttestResult, status_code=201)
async def attest(body: AttestBody, caller: AnyCaller, svc: Services) -> AttestResult:
    """An identity token for the measured process, and the session token it runs under."""
    if body.session_id is None:
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, "name the session the agent runs under")
    missing = QuartermasterError(ErrorCode.NOT_FOUND, f"no session {body.session_id}")
    state = await svc.presentations.session_state(body.session_id)
    if state is None or state.principal_id != caller.principal_id:
        raise missing
    if isinstance(caller, Agent) and caller.session_id not in state.ancestors:
        raise missing
    if state.agent != body.agent:
        raise QuartermasterError(ErrorCode.SESSION_INVALID, "the session is bound to another agent")
    if await svc.logins.frozen(caller.principal_id, list(dict.fromkeys([*state.chain, body.agent]))):
        raise QuartermasterError(ErrorCode.AGENT_FROZEN, f"agent {body.agent} is frozen")
    token = await svc.sessions.token(body.session_id)
    if token is None:
        code = ErrorCode.SESSION_REVOKED if state.status == "revoked" else ErrorCode.SESSION_INVALID
        raise QuartermasterError(code, f"the session is {state.status}")
    issued = svc.attestor.issue(
        body.agent, Measurement.model_validate(body.measurement.model_dump()), session_id=body.session_id
    )
    return AttestResult(
        agent=body.agent,
        identity_token=issued.token.reveal(),
        identity_jti=issued.jti,
        identity_expires_at=issued.expires_at,
        session_id=body.session_id,
        session_token=token.reveal(),
    )


@router.post("/retire", status_code=204)
async def retire(body: RetireBody, caller: AnyCaller, svc: Services) -> None:
    """The process exited: any later presentation of these identity tokens is a replay."""
    for jti in body.jtis:
        svc.replay.retire(svc.attestor.issuer, jti, int(time.time()) + MAX_IDENTITY_TTL_SECONDS + 60)
