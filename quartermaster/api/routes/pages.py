"""The approval pages a human opens in a browser (server-rendered HTML, not in the OpenAPI document).

Authentication is the page-session cookie (see quartermaster/api/page_sessions.py), declared on the
router: from the approval link of a notification (that one approval only), or from `/login` (e-mail,
then the code from the channel). Every decision:
1. comes from a page of this session (CSRF token, same origin),
2. matches what the page showed (`view_hash`, recomputed now from the workflow's pending approval:
   else `APPROVAL_CHANGED`),
3. is the first for that approval (else refused), and
4. reaches the workflow through the same update as `qm approve`, proven by the one-time code (inside
   the sealed link, or typed in by a human who logged in on the page).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote

from fastapi import APIRouter, Cookie, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from models.approval import HANDED_ON, ApprovalDecision, ApprovalRequest
from models.errors import ErrorCode, QuartermasterError
from models.money import Money
from models.secret import Secret
from quartermaster.api import page_templates as tpl
from quartermaster.api.approval_facts import ApprovalFacts, approval_facts, view_hash
from quartermaster.api.deps import Services
from quartermaster.api.errors import http_status
from quartermaster.api.page_sessions import COOKIE, PageSession, PageSessionStore
from quartermaster.api.routes.approvals import pending_approval
from quartermaster.api.routes.login import LOGIN_TOKEN_TTL, send_login_code
from quartermaster.api.services import ApiServices
from quartermaster.identity.approval_links import ApprovalLinkSealer, InvalidLink

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",  # no-referrer would make Chromium send `Origin: null`
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
}


def page_store(svc: ApiServices) -> PageSessionStore:
    """The page sessions, in the one store every replica shares."""
    return svc.pages


async def optional_page_session(
    svc: Services, qm_page: Annotated[str | None, Cookie(alias=COOKIE)] = None
) -> PageSession | None:
    """The browser's page session, if its cookie names a live one."""
    return await page_store(svc).get(qm_page)


PageCaller = Annotated[PageSession | None, Depends(optional_page_session)]
router = APIRouter(include_in_schema=False, dependencies=[Depends(optional_page_session)])


def html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def refusal(code: ErrorCode, message: str, session: PageSession | None = None) -> HTMLResponse:
    status = http_status(code)
    return html(tpl.error_page(status, str(code), message, who=session.email if session else None), status)


def _set_cookie(request: Request, resp: Response, session: PageSession) -> None:
    resp.set_cookie(
        COOKIE,
        session.sid,
        max_age=int((session.expires_at - datetime.now(UTC)).total_seconds()),
        httponly=True,
        samesite="strict",
        secure=request.url.hostname not in LOOPBACK,
        path="/",
    )


async def _form(request: Request) -> dict[str, str]:
    return dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


# ---- login ------------------------------------------------------------------------------------------
@router.get("/login")
async def login_form() -> HTMLResponse:
    return html(tpl.login_page())


@router.post("/login")
async def login_start(request: Request, svc: Services) -> HTMLResponse:
    form = await _form(request)
    email = form.get("email", "").strip().lower()
    if "@" not in email or len(email) > 254:
        return html(tpl.login_page(message="give your e-mail address"), 400)
    login_id, _ = await send_login_code(svc, email, used_for="approval pages")
    return html(tpl.login_page(login_id=login_id, email=email))


@router.post("/login/verify")
async def login_verify(request: Request, svc: Services) -> Response:
    form = await _form(request)
    try:
        token, login = await svc.logins.redeem(
            form.get("login_id", ""), form.get("code", ""), token_ttl=LOGIN_TOKEN_TTL
        )
    except LookupError as err:
        return html(tpl.login_page(message=str(err)), 401)
    await svc.logins.logout(token)  # the browser gets a page session, not the bearer token
    session = await page_store(svc).from_login(principal_id=login.principal_id, email=login.email)
    resp = RedirectResponse("/approvals", status_code=303, headers=HEADERS)
    _set_cookie(request, resp, session)
    return resp


@router.post("/logout")
async def logout(session: PageCaller, svc: Services) -> Response:
    if session is not None:
        await page_store(svc).end(session.sid)
    resp = RedirectResponse("/login", status_code=303, headers=HEADERS)
    resp.delete_cookie(COOKIE, path="/")
    return resp


# ---- the list -----------------------------------------------------------------------------------
@router.get("/approvals")
async def pending(session: PageCaller, svc: Services) -> Response:
    if session is None:
        return RedirectResponse("/login", status_code=303, headers=HEADERS)
    approvals = await svc.orchestrator.approvals(principal_id=session.principal_id)
    if session.approval_id is not None:
        approvals = [a for a in approvals if a.approval_id == session.approval_id]
    rows = [(a.approval_id, a.kind, a.summary, a.expires_at) for a in approvals]
    return html(tpl.list_page(rows, who=session.email))


# ---- one approval -----------------------------------------------------------------------------------
def _path(approval_id: str) -> str:
    return f"/approve/{quote(approval_id, safe='')}"


async def _facts(
    svc: ApiServices, session: PageSession, approval_id: str
) -> tuple[ApprovalRequest, ApprovalFacts]:
    if not session.may_open(approval_id):
        raise QuartermasterError(ErrorCode.NOT_FOUND, f"no open approval {approval_id}")
    approval = await pending_approval(svc, session.principal_id, approval_id)
    return approval, await approval_facts(svc, approval, session.email)


@router.get("/approve/{approval_id}")
async def show(
    approval_id: str, request: Request, session: PageCaller, svc: Services, t: str | None = None
) -> Response:
    """The approval page; `?t=` (from the notification) opens a session for this approval only."""
    if t is not None:
        return await _open_link(request, svc, approval_id, t)
    if session is None:
        return RedirectResponse("/login", status_code=303, headers=HEADERS)
    try:
        _, facts = await _facts(svc, session, approval_id)
    except QuartermasterError as err:
        return refusal(err.code, err.message, session)
    store = page_store(svc)
    page = tpl.approval_page(
        facts,
        view_hash=view_hash(facts),
        csrf=store.csrf_token(session, approval_id),
        needs_code=session.sealed_link is None,
        who=session.email,
        action=_path(approval_id),
    )
    return html(page)


async def _open_link(request: Request, svc: ApiServices, approval_id: str, token: str) -> Response:
    sealer = ApprovalLinkSealer(principal_key=svc.keyring.principal or b"")
    try:
        claims = sealer.open(token[:2000], approval_id=approval_id)
    except InvalidLink as err:
        return refusal(ErrorCode.LINK_INVALID, str(err))
    if await page_store(svc).link_used(token):
        return refusal(ErrorCode.LINK_INVALID, "this approval link was already used")
    try:
        await pending_approval(svc, claims.principal_id, approval_id)
    except QuartermasterError as err:
        return refusal(err.code, err.message)
    email = await svc.logins.email_of(claims.principal_id)
    if email is None:
        return refusal(ErrorCode.LINK_INVALID, "this link's principal is unknown here")
    session = await page_store(svc).from_link(
        token,
        principal_id=claims.principal_id,
        email=email,
        approval_id=approval_id,
        link_expires=claims.expires_at,
    )
    if session is None:
        return refusal(ErrorCode.LINK_INVALID, "this approval link was already used")
    # the token leaves the address bar at once: the page itself is served to the cookie
    resp = RedirectResponse(_path(approval_id), status_code=303, headers=HEADERS)
    _set_cookie(request, resp, session)
    return resp


def _information(form: dict[str, str], schema: dict[str, Any]) -> dict[str, Any]:
    """The `info.*` fields, nested as the schema says (integers and booleans converted)."""
    out: dict[str, Any] = {}
    for key, value in form.items():
        if not key.startswith("info.") or value == "":
            continue
        path = key.split(".")[1:]
        node, sub = out, schema
        for part in path[:-1]:
            node = node.setdefault(part, {})
            sub = (sub.get("properties") or {}).get(part, {})
        prop = (sub.get("properties") or {}).get(path[-1], {})
        typed: Any = value
        if prop.get("type") == "integer" and value.lstrip("-").isdigit():
            typed = int(value)
        elif prop.get("type") == "boolean":
            typed = value in ("1", "true", "on", "yes")
        node[path[-1]] = typed
    return out


@router.post("/approve/{approval_id}")
async def decide(approval_id: str, request: Request, session: PageCaller, svc: Services) -> Response:
    """Approve or deny what the page showed, once."""
    if session is None:
        return refusal(ErrorCode.UNAUTHENTICATED, "open the link from your notification, or log in")
    store = page_store(svc)
    form = await _form(request)
    if not _same_origin(request) or not store.csrf_ok(session, approval_id, form.get("csrf", "")):
        return refusal(ErrorCode.CSRF_INVALID, "this form did not come from your approval page", session)
    decision = form.get("decision")
    if decision not in ("approve", "deny"):
        return refusal(ErrorCode.INVALID_REQUEST, "approve or deny", session)
    try:
        approval, facts = await _facts(svc, session, approval_id)
    except QuartermasterError as err:
        if err.code == ErrorCode.NOT_FOUND and session.may_open(approval_id):
            return refusal(ErrorCode.APPROVAL_REJECTED, "this approval is already decided or closed", session)
        return refusal(err.code, err.message, session)
    if form.get("view_hash", "") != view_hash(facts):
        return refusal(
            ErrorCode.APPROVAL_CHANGED,
            "what this approval is about changed after the page was shown (price, configuration, cap or"
            " budget): nothing was decided; open the page again to see the current request",
            session,
        )
    if decision == "approve" and approval.kind in HANDED_ON:
        key, label = HANDED_ON[approval.kind]
        target = str(approval.details.get(key, ""))
        return html(
            tpl.result_page(facts, "approve", who=session.email, link=(label, target) if target else None)
        )
    if session.sealed_link is not None:
        try:
            code = (
                ApprovalLinkSealer(principal_key=svc.keyring.principal or b"")
                .open(
                    session.sealed_link, approval_id=approval_id, now=datetime.now(UTC) - timedelta(minutes=5)
                )
                .code
            )
        except InvalidLink as err:
            return refusal(ErrorCode.LINK_INVALID, str(err), session)
    else:
        code = Secret(form.get("code", "").strip()[:64])
    if not await store.claim_decision(session, approval_id):
        return refusal(ErrorCode.APPROVAL_REJECTED, "this approval was already decided", session)
    raise_to = None
    if approval.kind == "spend_limit" and form.get("raise_limit_to"):
        try:
            raise_to = Money(
                amount=round(float(form["raise_limit_to"]) * 100),
                currency=facts.cap.limit.currency if facts.cap else "usd",
            )
        except ValueError:
            await store.release_decision(approval_id)
            return refusal(ErrorCode.INVALID_REQUEST, "the new limit is an amount like 250.00", session)
    outcome = await svc.orchestrator.decide(
        ApprovalDecision(
            approval_id=approval_id,
            decision=decision,
            code=code,
            reason=(form.get("reason") or "").strip()[:500] or None,
            information=_information(form, approval.details.get("schema") or {})
            if approval.kind == "information"
            else None,
            raise_limit_to=raise_to,
        )
    )
    if outcome.status != "ACCEPTED":
        if outcome.status == "WRONG_CODE":
            await store.release_decision(approval_id)
        return refusal(ErrorCode.APPROVAL_REJECTED, f"{outcome.status} for {approval_id}", session)
    if approval.kind == "agent_unfreeze" and decision == "approve":
        agent = approval.workflow_id.removeprefix(f"agent-{session.principal_id}-")
        await svc.logins.set_frozen(session.principal_id, agent, False)
    if session.approval_id is not None:
        await store.end(session.sid)  # a link's session decides once
    return html(tpl.result_page(facts, decision, who=session.email))
