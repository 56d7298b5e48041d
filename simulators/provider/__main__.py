"""`python -m simulators.provider --provider cloud|db|mail --port N [--data-dir D] [--jwks-url U]`

Reads QM_DATA_DIR, QM_PUBLIC_URL (the assertions' issuer and the OAuth redirect base), QM_STRIPE_BASE_URL
and STRIPE_API_KEY the way quartermaster.config.Settings does; serves on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import cast

from quartermaster.api.serving import serve
from quartermaster.config import Settings
from simulators.provider.app import create_app
from simulators.provider.catalogs import CATALOGS
from simulators.provider.config import PaymentCharger, SimulatorConfig


def stripe_charger(settings: Settings) -> PaymentCharger | None:
    """The Stripe adapter pointed at the local Stripe server (or real Stripe for a real key)."""
    try:
        module = importlib.import_module("providers.stripe_adapter")
    except ImportError:
        print("simulators.provider: no providers.stripe_adapter; paid services answer 503", file=sys.stderr)
        return None
    base_url = settings.stripe_base_url if settings.stripe_is_local else None
    return cast(PaymentCharger, module.StripeAdapter(api_key=settings.stripe_api_key, base_url=base_url))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.provider", description=__doc__)
    parser.add_argument("--provider", required=True, choices=sorted(CATALOGS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: QM_DATA_DIR or .qm")
    parser.add_argument("--jwks-url", default=None, help="default: <QM_PUBLIC_URL>/.well-known/jwks.json")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    config = SimulatorConfig(
        provider=args.provider,
        data_dir=(args.data_dir or settings.data_dir).resolve(),
        public_url=settings.public_url,
        jwks_url=args.jwks_url,
        charger=stripe_charger(settings),
    )
    print(f"provider simulator {args.provider} on http://127.0.0.1:{args.port} (state in {config.db_path})")
    serve(create_app(config), host="127.0.0.1", port=args.port)  # keep-alive as the API's
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
