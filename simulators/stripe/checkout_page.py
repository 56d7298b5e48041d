"""The local stand-in for Stripe's hosted Checkout page (mode=setup): the human picks a test card and
submits; the session completes, the webhooks go out, and the browser is sent to `success_url`."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from simulators.stripe.api_context import ApiContext
from simulators.stripe.billing import TEST_CARDS, complete_checkout
from simulators.stripe.store import SimStore
from simulators.stripe.webhooks import WebhookSender
from simulators.stripe.wire import StripeApiError

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Add a payment method (local Stripe)</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto}}
label{{display:block;margin:.5rem 0}}button{{padding:.5rem 1.5rem}}</style></head>
<body><h1>Add a payment method</h1>
<p>Local Stripe test mode: no real card is used. Choose a test card to save for later payments.</p>
{body}
</body></html>"""


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(body=body), status_code=status)


def checkout_routes(
    store: SimStore, sender: WebhookSender, base_url: Callable[[Request], str]
) -> list[Route]:
    async def show(request: Request) -> Response:
        session = store.get("checkout.session", request.path_params["session_id"])
        if session is None:
            return _page("<p>This checkout link is not valid.</p>", 404)
        if session["status"] != "open" or store.now() >= session["expires_at"]:
            return _page("<p>This checkout session is no longer open.</p>", 410)
        options = "".join(
            f'<label><input type="radio" name="card" value="{escape(token)}"{" checked" if i == 0 else ""}> '
            f"{escape(card['brand'].title())} ending {escape(card['last4'])} "
            f"({'succeeds' if card['outcome'] == 'succeeds' else 'declines at charge'})</label>"
            for i, (token, card) in enumerate(TEST_CARDS.items())
        )
        cancel = session.get("cancel_url")
        cancel_link = f' <a href="{escape(cancel)}">Cancel</a>' if cancel else ""
        return _page(
            f'<form method="post">{options}<button type="submit">Save card</button>{cancel_link}</form>'
        )

    async def submit(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        ctx = ApiContext(store=store, base_url=base_url(request))
        try:
            with store.transaction():
                session = complete_checkout(ctx, request.path_params["session_id"], form.get("card", ""))
        except StripeApiError as exc:
            return _page(f"<p>{escape(exc.message)}</p>", 404 if exc.status == 404 else 400)
        sender.schedule(ctx.emitted)
        return RedirectResponse(session["success_url"], status_code=303)

    return [
        Route("/checkout/{session_id}", show, methods=["GET"]),
        Route("/checkout/{session_id}", submit, methods=["POST"]),
    ]
