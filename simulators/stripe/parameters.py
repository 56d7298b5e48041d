"""The parameters Stripe defines on each endpoint the local server serves, read from
`parameters.json` (generated from stripe-python's own parameter types: GA, and the beta for Shared
Payment Tokens; see tests/stripe_contract/generate.py). A request naming any other parameter, at any
depth, is refused as Stripe refuses it (`parameter_unknown`)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

PARAMETERS_FILE = Path(__file__).with_name("parameters.json")


@functools.cache
def recognised(method: str, path: str) -> dict[str, Any]:
    """{name: None | subtree} for one endpoint (`path` is the template, e.g. /v1/refunds/{id})."""
    endpoints: dict[str, dict[str, Any]] = json.loads(PARAMETERS_FILE.read_text())["endpoints"]
    return endpoints[f"{method} {path}"]


def unknown_parameter(tree: dict[str, Any], params: dict[str, Any], prefix: str = "") -> str | None:
    """The first parameter (in Stripe's bracket notation) that `tree` does not define, or None."""
    for name in sorted(params):
        label = f"{prefix}[{name}]" if prefix else name
        if name not in tree:
            return label
        sub, value = tree[name], params[name]
        if sub is None:
            continue  # a scalar, a list of scalars or a free-form hash (metadata)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, dict):
                where = f"{label}[{i}]" if isinstance(value, list) else label
                if found := unknown_parameter(sub, item, where):
                    return found
    return None
