"""`python -m quartermaster.api --port 8700`: the API (what `qm serve` and `qm dev` run)."""

from __future__ import annotations

import argparse
import logging

from quartermaster.api.app import create_app, preflight
from quartermaster.api.serving import serve
from quartermaster.logging_setup import configure_logging, quiet_http_client_logs


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m quartermaster.api")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    configure_logging(logging.INFO)
    quiet_http_client_logs()
    preflight()
    serve(create_app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
