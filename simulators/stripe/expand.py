"""`expand[]`: replace an id in a returned object by the object it names, as Stripe does
(`expand[]=customer` on a PaymentMethod, `expand[]=data.customer` on a list, `latest_charge.customer`).
A path that does not end at an expandable id is refused, with Stripe's wording."""

from __future__ import annotations

from typing import Any

from simulators.stripe.store import SimStore
from simulators.stripe.wire import invalid

#: id prefix -> the object kind it names (the kinds this server stores)
_KINDS = {
    "cus_": "customer",
    "pm_": "payment_method",
    "pi_": "payment_intent",
    "ch_": "charge",
    "seti_": "setup_intent",
    "re_": "refund",
    "cs_": "checkout.session",
    "spt_": "shared_payment.issued_token",
}
MAX_DEPTH = 4  # Stripe allows expanding at most four levels


def expand(store: SimStore, obj: dict[str, Any], paths: Any) -> dict[str, Any]:
    """`obj` with every path in `paths` (a list of dotted field names) expanded in place."""
    if paths is None or paths == "":
        return obj
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise invalid("Invalid array", param="expand")
    for path in paths:
        parts = path.split(".")
        if len(parts) > MAX_DEPTH:
            raise invalid(f"You cannot expand more than {MAX_DEPTH} levels of a property.", param="expand")
        _expand(store, obj, parts, path)
    return obj


def _expand(store: SimStore, node: Any, parts: list[str], path: str) -> None:
    if isinstance(node, dict) and node.get("object") in ("list", "search_result") and parts[0] == "data":
        for item in node["data"]:
            _expand(store, item, parts[1:], path)
        return
    if not parts or not isinstance(node, dict) or parts[0] not in node:
        raise invalid(f"This property cannot be expanded ({path}).", param="expand")
    name, rest = parts[0], parts[1:]
    value = node[name]
    if isinstance(value, str):
        kind = next((k for prefix, k in _KINDS.items() if value.startswith(prefix)), None)
        found = store.get(kind, value) if kind else None
        if found is None:
            raise invalid(f"This property cannot be expanded ({path}).", param="expand")
        node[name] = value = found
    elif value is not None and not isinstance(value, dict):
        raise invalid(f"This property cannot be expanded ({path}).", param="expand")
    if rest and value is not None:
        _expand(store, value, rest, path)
