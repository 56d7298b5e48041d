"""A local Stripe-compatible server: the subset of the Stripe API Quartermaster uses, in Stripe's
wire format, so the real stripe SDK works against it unchanged (see docs/stripe.md)."""

from simulators.stripe.app import SimConfig, create_app

__all__ = ["SimConfig", "create_app"]
