"""What the API and the worker share for the protocol's outside face: the assertion signer (the worker
signs identity assertions, the API publishes its JWKS) and the Stripe webhook inbox. The HTTP routes
themselves (JWKS, OAuth callback, Stripe webhook) are in `quartermaster.api.routes.callbacks`."""

from __future__ import annotations

from typing import Any

from providers.assertions import AssertionSigner
from providers.store import Store, open_store
from quartermaster.config import Settings


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


def build_inbox(settings: Settings, store: Store | None = None) -> Any | None:
    """The webhook inbox over the store's `webhooks` (opened from `settings` unless given)."""
    from quartermaster.stripe_webhooks import WebhookInbox

    secret = webhook_secret(settings)
    if secret is None:
        return None
    store = store or open_store(settings.resolved_database_url)
    return WebhookInbox(store=store.webhooks, secret=secret)
