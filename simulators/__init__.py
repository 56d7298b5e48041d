"""Local simulators of the outside world, for development and tests only: the provider side of the
protocol (`simulators.provider`) and a Stripe-compatible server (`simulators.stripe`). The product never
imports them (a test checks it)."""
