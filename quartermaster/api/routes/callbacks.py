"""What outside systems call: the JWKS providers verify assertions with, the OAuth redirect target, the
Stripe webhook, the Checkout return pages. Open by nature; each authenticates what it receives (the
OAuth state is checked whole by the workflow, webhooks by their signature)."""

from __future__ import annotations

import html
import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from temporalio.service import RPCError

from models.provisioning import OAuthCallback
from models.secret import Secret
from quartermaster.api.deps import Services, services

log = logging.getLogger("quartermaster.api")
router = APIRouter(tags=["callbacks"], dependencies=[Depends(services)])


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(body)}</p>",
        status_code=status,
    )


#: one key set per kind of token, so a verifier trusts exactly the keys of what it checks (docs/identity.md)
JWKS_PATHS = {
    "assertion": "/.well-known/jwks.json",
    "agent-identity": "/.well-known/jwks/agent-identity.json",
    "session": "/.well-known/jwks/session.json",
}
_JWKS_HEADERS = {"Cache-Control": "max-age=60"}


@router.get(JWKS_PATHS["assertion"])
async def jwks(svc: Services) -> JSONResponse:
    """The public keys of identity assertions to providers (`typ: qm-assertion+jwt`)."""
    return JSONResponse(svc.signer.jwks(), headers=_JWKS_HEADERS)


@router.get(JWKS_PATHS["agent-identity"])
async def agent_identity_jwks(svc: Services) -> JSONResponse:
    """The public keys of the local attestor's agent identity tokens (`typ: qm-agent+jwt`)."""
    return JSONResponse(svc.presentations.identity_jwks(), headers=_JWKS_HEADERS)


@router.get(JWKS_PATHS["session"])
async def session_jwks(svc: Services) -> JSONResponse:
    """The public keys of session tokens (`typ: qm-session+jwt`)."""
    return JSONResponse(svc.presentations.session_jwks(), headers=_JWKS_HEADERS)


@router.get("/oauth/callback", response_class=HTMLResponse)
async def oauth_callback(request: Request, svc: Services) -> Response:
    """The provider's redirect after the human's consent: a signal to the waiting request."""
    state = request.query_params.get("state", "")[:500]
    code = request.query_params.get("code")
    error = request.query_params.get("error")
    # state = <workflow id>.oauth_consent.<nonce>; the workflow checks the whole state matches
    workflow_id = state.rsplit(".", 2)[0] if state.count(".") >= 2 else ""
    if not workflow_id.startswith(("provision-", "link-")) or not (code or error):
        return _page("Invalid OAuth callback", "This link is not part of a pending request.", 400)
    callback = OAuthCallback(
        state=state, code=Secret(code[:2000]) if code else None, error=(error or "")[:100] or None
    )
    try:
        await svc.temporal.get_workflow_handle(workflow_id).signal("oauth_callback", callback)
    except RPCError:
        return _page("Request not found", "The request this consent belonged to is no longer waiting.", 404)
    if error:
        return _page("Consent refused", "Quartermaster will not link the account. You can close this tab.")
    return _page("Account linked", "Quartermaster completes the link now. You can close this tab.")


@router.post("/stripe/webhook", response_class=PlainTextResponse)
async def stripe_webhook(request: Request, svc: Services) -> Response:
    """Stripe's signed events (a payment method was saved): a signal to the waiting request."""
    if svc.webhooks is None:
        return PlainTextResponse("webhooks are not configured", status_code=503)
    payload = await request.body()

    async def ready(customer_id: str, metadata: dict[str, str]) -> None:
        wid = metadata.get("workflow_id", "")
        if wid.startswith("provision-"):
            try:
                await svc.temporal.get_workflow_handle(wid).signal("payment_method_ready")
            except RPCError:
                log.info("payment method webhook for a request that is no longer running")

    try:
        await svc.webhooks.handle(payload, request.headers.get("stripe-signature", ""), ready)
    except Exception as exc:  # verification failures: never echo the payload
        log.warning("rejected a Stripe webhook: %s", type(exc).__name__)
        return PlainTextResponse("invalid signature", status_code=400)
    return PlainTextResponse("ok")


@router.get("/checkout/done", response_class=HTMLResponse)
async def checkout_done() -> Response:
    return _page("Payment method added", "Your request continues by itself. You can close this tab.")


@router.get("/checkout/cancelled", response_class=HTMLResponse)
async def checkout_cancelled() -> Response:
    return _page(
        "No payment method added",
        "You left the Checkout page without saving a card. The request waits until it times out; "
        "open the link from your notification again to add one.",
    )


@router.get("/healthz")
async def health() -> JSONResponse:
    return JSONResponse({"ok": True})
