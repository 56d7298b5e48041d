"""What the API and the worker share for the protocol's outside face: the assertion signer (the worker
signs identity assertions, the API publishes its JWKS) and the Stripe webhook inbox. The HTTP routes
themselves (JWKS, OAuth callback, Stripe webhook) are in `quartermaster.api.routes.callbacks`."""

from __future__ import annotations

from typing import Any

from providers.assertions import AssertionSigner
from providers.store import Store, open_store
from quartermaster.config import Settings
from quartermaster.keys import Keyring


def assertion_signer(settings: Settings, keyring: Keyring | None = None) -> AssertionSigner:
    """The one place the signer is built: worker (signs) and API (publishes the JWKS), both from the
    key file's `assertion` section (`keyring`, else the key file `settings` names), so every replica
    signs and publishes the same keys."""
    if keyring is None:
        from quartermaster.keys import load_keyring

        keyring = load_keyring(settings.resolved_keys_file, create=settings.dev)
    return keyring.assertion_signer(issuer=settings.public_url)


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
