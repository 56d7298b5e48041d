"""Read Stripe's own definitions out of an installed stripe-python: the parameter tree of a params
TypedDict and the field tree of a resource class, as JSON. Run as a script with the SDK to read on
sys.path (the beta lives in its own directory, so it runs in a subprocess):

    python sdk_shapes.py params:stripe.params.checkout.SessionCreateParams resource:stripe.Customer ...

Parameter tree: {name: null | subtree}; null = any value (a scalar, a list of scalars, or a free-form
hash such as `metadata`); a subtree restricts the keys of a hash, or of each hash in a list.
Resource: {"object": OBJECT_NAME, "fields": {field: {"optional": bool, "inner": fields | null}}}."""

from __future__ import annotations

import importlib
import json
import re
import sys
import typing
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _resolve(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _is_typeddict(value: Any) -> bool:
    return isinstance(value, type) and hasattr(value, "__required_keys__")


def _request_option_keys() -> set[str]:
    from stripe._request_options import RequestOptions

    return set(RequestOptions.__annotations__)


def params_tree(cls: Any, seen: tuple[Any, ...] = ()) -> dict[str, Any]:
    """The keys of a params TypedDict, each with the tree of the TypedDict it nests (if any)."""
    namespace = vars(sys.modules[cls.__module__])
    skip = _request_option_keys()
    tree: dict[str, Any] = {}
    for key, annotation in cls.__annotations__.items():
        if key in skip:
            continue
        nested = [
            namespace[n]
            for n in _NAME.findall(repr(annotation))
            if n in namespace and _is_typeddict(namespace[n]) and namespace[n] is not cls
        ]
        if nested and nested[0] not in seen:
            tree[key] = params_tree(nested[0], (*seen, cls))
        else:
            tree[key] = None
    return tree


def _optional(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith("Optional[")
    return type(None) in typing.get_args(annotation)


def resource_tree(cls: Any, depth: int = 0) -> dict[str, Any]:
    """The fields a resource (or inner object) declares, whether each may be null, and the tree of
    the inner object class the SDK deserialises it into."""
    inner = getattr(cls, "_inner_class_types", {})
    tree: dict[str, Any] = {}
    for name, annotation in vars(cls).get("__annotations__", {}).items():
        if name.startswith("_") or "ClassVar" in repr(annotation):
            continue
        sub = inner.get(name)
        tree[name] = {
            "optional": _optional(annotation),
            "inner": resource_tree(sub, depth + 1) if sub is not None and depth < 8 else None,
        }
    return tree


def main(argv: list[str]) -> None:
    import stripe

    out: dict[str, Any] = {"version": stripe.VERSION, "params": {}, "resources": {}}
    for arg in argv:
        kind, _, dotted = arg.partition(":")
        target = _resolve(dotted)
        if kind == "params":
            out["params"][dotted] = params_tree(target)
        else:
            out["resources"][dotted] = {"object": target.OBJECT_NAME, "fields": resource_tree(target)}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
