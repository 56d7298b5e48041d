"""`python -m simulators.stripe --port N [--data-dir D] [--webhook-url URL]`

Reads QM_DATA_DIR, QM_PUBLIC_URL (webhooks go to `<QM_PUBLIC_URL>/stripe/webhook`),
STRIPE_WEBHOOK_SECRET and STRIPE_API_KEY (only when it is not a real Stripe key) from the
environment. Without STRIPE_WEBHOOK_SECRET a secret is created once in
`<data dir>/stripe-webhook-secret` (mode 0600) and reused; the gateway reads the same file
(`quartermaster.stripe_webhooks.webhook_secret`)."""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from quartermaster.api.serving import serve
from quartermaster.config import DEV_PORTS, LOCAL_STRIPE_KEY, Settings
from simulators.stripe.app import SimConfig, create_app

SECRET_FILE = "stripe-webhook-secret"  # noqa: S105 (a file name)


def webhook_secret(data_dir: Path, env: dict[str, str]) -> str:
    """STRIPE_WEBHOOK_SECRET, or the dev secret file, created with mode 0600 when absent."""
    if env.get("STRIPE_WEBHOOK_SECRET"):
        return env["STRIPE_WEBHOOK_SECRET"]
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        value = "whsec_" + secrets.token_hex(24)
        f.write(value + "\n")
    return value


def main(argv: list[str] | None = None) -> None:
    env = dict(os.environ)
    settings = Settings.from_env(env)
    parser = argparse.ArgumentParser(prog="python -m simulators.stripe", description=__doc__)
    parser.add_argument("--port", type=int, default=DEV_PORTS["stripe"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--data-dir", type=Path, default=settings.data_dir)
    parser.add_argument("--webhook-url", default=f"{settings.public_url.rstrip('/')}/stripe/webhook")
    args = parser.parse_args(argv)
    data_dir = args.data_dir.resolve()
    # a real Stripe key means the adapter talks to api.stripe.com; the local server keeps its own key
    api_key = settings.stripe_api_key if settings.stripe_is_local else LOCAL_STRIPE_KEY
    config = SimConfig(
        data_dir=data_dir,
        api_key=api_key,
        webhook_url=args.webhook_url or None,
        webhook_secret=webhook_secret(data_dir, env),
    )
    print(f"local Stripe on http://{args.host}:{args.port} (data {data_dir}/stripe.sqlite)", flush=True)
    serve(create_app(config), host=args.host, port=args.port)  # keep-alive as the API's


if __name__ == "__main__":
    main()
