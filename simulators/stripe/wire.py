"""Stripe's wire format: bracket-notation form bodies in, JSON objects and error envelopes out."""

from __future__ import annotations

import re
import secrets
import string
from typing import Any
from urllib.parse import parse_qsl

_ALPHABET = string.ascii_letters + string.digits
_KEY_PART = re.compile(r"\[([^\[\]]*)\]")

#: HTTP status for each Stripe error type, so stripe-python raises the matching exception class
STATUS_FOR_TYPE = {
    "invalid_request_error": 400,
    "idempotency_error": 400,
    "card_error": 402,
    "api_error": 500,
    "rate_limit_error": 429,
}


class StripeApiError(Exception):
    """An error in Stripe's JSON shape. `saved` errors come from a request that started executing,
    so Stripe's idempotency layer replays them; validation errors are not saved."""

    def __init__(
        self,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        saved: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message
        self.code = code
        self.param = param
        self.status = status or STATUS_FOR_TYPE.get(type_, 400)
        self.saved = saved
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
        if self.param:
            error["param"] = self.param
        error.update(self.extra)
        return {"error": error}


def invalid(message: str, *, param: str | None = None, code: str = "parameter_invalid") -> StripeApiError:
    return StripeApiError("invalid_request_error", message, code=code, param=param)


def missing(param: str) -> StripeApiError:
    return invalid(f"Missing required param: {param}.", param=param, code="parameter_missing")


def not_found(kind: str, ident: str, param: str = "id") -> StripeApiError:
    # Stripe's wording; the id is the caller's own input, never a secret of someone else
    return StripeApiError(
        "invalid_request_error",
        f"No such {kind}: '{ident}'",
        code="resource_missing",
        param=param,
        status=404,
    )


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def decode_form(body: str) -> dict[str, Any]:
    """`a[b][c]=1&l[0]=x&l[1]=y` -> {"a": {"b": {"c": "1"}}, "l": ["x", "y"]} (Stripe's encoding)."""
    out: dict[str, Any] = {}
    for raw_key, value in parse_qsl(body, keep_blank_values=True):
        head, _, rest = raw_key.partition("[")
        parts = [head, *_KEY_PART.findall("[" + rest)] if rest else [head]
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return _lists(out)


def _lists(node: dict[str, Any]) -> dict[str, Any]:
    """Turn dicts keyed 0..n-1 (from `l[0]`, `l[1]`) into lists."""
    for key, value in node.items():
        if isinstance(value, dict):
            value = _lists(value)
            keys = list(value)
            if keys and all(k.isdigit() for k in keys) and sorted(map(int, keys)) == list(range(len(keys))):
                node[key] = [value[str(i)] for i in range(len(keys))]
            else:
                node[key] = value
    return node


def list_object(url: str, data: list[dict[str, Any]], *, has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "url": url, "has_more": has_more, "data": data}


def search_object(url: str, data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "search_result", "url": url, "has_more": False, "next_page": None, "data": data}


def as_int(params: dict[str, Any], name: str, *, required: bool = True, minimum: int = 0) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise missing(name)
        return None
    if not isinstance(raw, str) or not raw.lstrip("-").isdigit():
        raise invalid(f"Invalid integer: {name}", param=name)
    value = int(raw)
    if value < minimum:
        raise invalid(f"{name} must be at least {minimum}", param=name)
    return value


def as_str(params: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise missing(name)
        return None
    if not isinstance(raw, str):
        raise invalid(f"Invalid string: {name}", param=name)
    return raw


def req_int(params: dict[str, Any], name: str, *, minimum: int = 0) -> int:
    value = as_int(params, name, minimum=minimum)
    if value is None:  # as_int raises for a missing required value; this keeps the type exact
        raise missing(name)
    return value


def req_str(params: dict[str, Any], name: str) -> str:
    value = as_str(params, name)
    if value is None:  # as_str raises for a missing required value; this keeps the type exact
        raise missing(name)
    return value


def as_metadata(params: dict[str, Any], name: str = "metadata") -> dict[str, str]:
    """Stripe's metadata limits: 50 keys, key <= 40 chars, value <= 500 chars."""
    raw = params.get(name)
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise invalid("Invalid metadata: must be a hash of strings", param=name)
    if len(raw) > 50:
        raise invalid("Invalid metadata: at most 50 keys", param=name)
    for key, value in raw.items():
        if len(key) > 40 or len(value) > 500:
            raise invalid(f"Invalid metadata[{key[:40]}]: key or value too long", param=f"{name}[{key[:40]}]")
    return {k: v for k, v in raw.items() if v != ""}
