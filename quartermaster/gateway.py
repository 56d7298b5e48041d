"""The orchestrator's HTTP face: the JWKS providers verify assertions with, the OAuth redirect target,
and the Stripe webhook endpoint. It holds no provider secrets; it turns callbacks into signals.

    python -m quartermaster.gateway --port 8700
"""

from __future__ import annotations

import argparse
import html
import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from temporalio.client import Client
from temporalio.service import RPCError

from models.provisioning import OAuthCallback
from models.secret import Secret
from providers.assertions import AssertionSigner
from providers.store import Store, open_store
from quartermaster.config import Settings

log = logging.getLogger("quartermaster.gateway")


def assertion_signer(settings: Settings) -> AssertionSigner:
    """The one place the signer is loaded: worker (signs) and gateway (publishes the JWKS)."""
    return AssertionSigner.load_or_create(
        settings.data_dir / "assertion-keys.json", issuer=settings.public_url
    )


def webhook_secret(settings: Settings) -> str | None:
    if settings.stripe_webhook_secret:
        return settings.stripe_webhook_secret
    path = settings.data_dir / "stripe-webhook-secret"
    return path.read_text().strip() if path.exists() else None


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(body)}</p>",
        status_code=status,
    )


def create_app(
    *, settings: Settings, client: Client, signer: AssertionSigner, inbox: Any | None
) -> Starlette:
    """`inbox` is a `quartermaster.stripe_webhooks.WebhookInbox` (None: webhooks disabled)."""

    async def jwks(_: Request) -> JSONResponse:
        return JSONResponse(signer.jwks(), headers={"Cache-Control": "max-age=60"})

    async def oauth_callback(request: Request) -> Response:
        state = request.query_params.get("state", "")
        code = request.query_params.get("code")
        error = request.query_params.get("error")
        # state = <workflow id>.oauth_consent.<nonce>; the workflow checks the whole state matches
        workflow_id = state.rsplit(".", 2)[0] if state.count(".") >= 2 else ""
        if not workflow_id.startswith("provision-") or not (code or error):
            return _page("Invalid OAuth callback", "This link is not part of a pending request.", 400)
        callback = OAuthCallback(state=state, code=Secret(code) if code else None, error=error)
        try:
            await client.get_workflow_handle(workflow_id).signal("oauth_callback", callback)
        except RPCError:
            return _page(
                "Request not found", "The request this consent belonged to is no longer waiting.", 404
            )
        if error:
            return _page(
                "Consent refused", "Quartermaster will not link the account. You can close this tab."
            )
        return _page("Account linked", "Quartermaster completes the link now. You can close this tab.")

    async def stripe_webhook(request: Request) -> Response:
        if inbox is None:
            return PlainTextResponse("webhooks are not configured", status_code=503)
        payload = await request.body()

        async def ready(customer_id: str, metadata: dict[str, str]) -> None:
            wid = metadata.get("workflow_id", "")
            if wid.startswith("provision-"):
                try:
                    await client.get_workflow_handle(wid).signal("payment_method_ready")
                except RPCError:
                    log.info("payment method webhook for a request that is no longer running")

        try:
            await inbox.handle(payload, request.headers.get("stripe-signature", ""), ready)
        except Exception as exc:  # verification failures: never echo the payload
            log.warning("rejected a Stripe webhook: %s", type(exc).__name__)
            return PlainTextResponse("invalid signature", status_code=400)
        return PlainTextResponse("ok")

    async def checkout_done(_: Request) -> Response:
        return _page("Payment method added", "Your request continues by itself. You can close this tab.")

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/.well-known/jwks.json", jwks),
            Route("/oauth/callback", oauth_callback),
            Route("/stripe/webhook", stripe_webhook, methods=["POST"]),
            Route("/checkout/done", checkout_done),
            Route("/checkout/cancelled", checkout_done),
            Route("/healthz", health),
        ]
    )


def build_inbox(settings: Settings, store: Store | None = None) -> Any | None:
    """The webhook inbox over the store's `webhooks` (opened from `settings` unless given)."""
    from quartermaster.stripe_webhooks import WebhookInbox

    secret = webhook_secret(settings)
    if secret is None:
        return None
    store = store or open_store(settings.resolved_database_url)
    return WebhookInbox(store=store.webhooks, secret=secret)


def main() -> None:
    import asyncio

    import uvicorn

    from quartermaster.keys import load_keyring
    from quartermaster.temporal import connect

    parser = argparse.ArgumentParser(prog="python -m quartermaster.gateway")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    settings = Settings.from_env()

    async def serve() -> None:
        client = await connect(settings, load_keyring(settings.resolved_keys_file, create=settings.dev))
        app = create_app(
            settings=settings, client=client, signer=assertion_signer(settings), inbox=build_inbox(settings)
        )
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
        await server.serve()

    asyncio.run(serve())


if __name__ == "__main__":
    main()

__all__ = ["Path", "create_app", "main"]
