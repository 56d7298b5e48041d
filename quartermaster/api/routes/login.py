"""Human login: a one-time code to the human's channel, traded for a short-lived login token.

Anyone may ask for a login (that is how logging in works); only whoever reads the human's channel can
finish it. Codes are single use, expire, and allow five wrong tries; an empty code never counts."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Depends, Security
from fastapi.security import HTTPAuthorizationCredentials

from models.api import LoginStart, LoginStarted, LoginToken, LoginVerify, WhoAmI
from models.errors import ErrorCode, QuartermasterError
from quartermaster.api.deps import Agent, MaybeCaller, Services, _bearer, optional_caller, require_human
from quartermaster.api.errors import ERROR_RESPONSES
from quartermaster.api.services import ApiServices

router = APIRouter(
    prefix="/v1", tags=["login"], dependencies=[Depends(optional_caller)], responses=ERROR_RESPONSES
)
LOGIN_CODE_TTL = timedelta(minutes=10)
LOGIN_TOKEN_TTL = timedelta(hours=12)


async def send_login_code(svc: ApiServices, email: str, *, used_for: str) -> tuple[str, datetime]:
    """Start a login and deliver its one-time code to the human's channel: (login id, expiry)."""
    email = email.strip().lower()
    principal_id = svc.keyring.principal_id(email)
    login_id, code, expires = await svc.logins.start(
        principal_id=principal_id, email=email, ttl=LOGIN_CODE_TTL
    )
    await svc.notifier.deliver(
        principal_id=principal_id,
        principal_email=email,
        message={
            "type": "login_code",
            "kind": "login",
            "login_id": login_id,
            "summary": f"your Quartermaster login code ({used_for})",
            "code": code,
            "expires_at": expires.isoformat(),
        },
    )
    return login_id, expires


@router.post("/login", response_model=LoginStarted, status_code=202)
async def start_login(body: LoginStart, svc: Services) -> LoginStarted:
    """Send a one-time login code to the human's notification channel."""
    login_id, expires = await send_login_code(svc, str(body.email), used_for="qm login")
    return LoginStarted(login_id=login_id, expires_at=expires)


@router.post("/login/verify", response_model=LoginToken)
async def verify_login(body: LoginVerify, svc: Services) -> LoginToken:
    """Trade the code for a login token (keep it private: `qm login` stores it mode 0600)."""
    try:
        token, login = await svc.logins.redeem(body.login_id, body.code, token_ttl=LOGIN_TOKEN_TTL)
    except LookupError as err:
        raise QuartermasterError(ErrorCode.LOGIN_INVALID, str(err)) from None
    return LoginToken(
        token=token, principal_id=login.principal_id, email=login.email, expires_at=login.expires_at
    )


@router.post("/logout", status_code=204, dependencies=[Security(require_human)])
async def logout(svc: Services, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> None:
    if credentials is not None:
        await svc.logins.logout(credentials.credentials)


@router.get("/whoami", response_model=WhoAmI)
async def whoami(caller: MaybeCaller) -> WhoAmI:
    """Who the API takes you for."""
    if caller is None:
        return WhoAmI(kind="anonymous")
    if isinstance(caller, Agent):
        return WhoAmI(
            kind="agent",
            principal_id=caller.principal_id,
            email=caller.email,
            agent=caller.agent,
            agent_identity=caller.agent_identity,
            session_id=caller.session_id,
            agent_chain=list(caller.chain),
        )
    return WhoAmI(kind="human", principal_id=caller.principal_id, email=caller.email)
