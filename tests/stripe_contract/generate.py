"""Regenerate simulators/stripe/parameters.json, the parameters the local Stripe recognises on each
endpoint, from the pinned stripe-python releases (tests/test_stripe_contract.py fails when it drifts):

    .venv/bin/python -m tests.stripe_contract.generate
"""

from __future__ import annotations

import json

from simulators.stripe.parameters import PARAMETERS_FILE
from tests.stripe_contract.routes import ENDPOINTS, key
from tests.stripe_contract.sdk import params_tree, pinned


def recognised() -> dict[str, object]:
    return {
        "generated_from": [pinned("ga"), pinned("beta")],
        "endpoints": {key(e.method, e.path): params_tree(e.sdk, e.params) for e in ENDPOINTS},
    }


def main() -> None:
    PARAMETERS_FILE.write_text(json.dumps(recognised(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PARAMETERS_FILE}")


if __name__ == "__main__":
    main()
