"""The contract's checks, as pure functions over what was recorded on the wire, so each also runs
against a deliberately broken adapter or server: parameters against Stripe's parameter trees,
objects against Stripe's resource classes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from simulators.stripe.parameters import unknown_parameter
from simulators.stripe.wire import decode_form
from tests.stripe_contract.routes import ENDPOINTS, Endpoint, key
from tests.stripe_contract.sdk import params_tree, resource_tree

_LIST_FIELDS = {"list": {"object", "data", "has_more", "url"},
                "search_result": {"object", "data", "has_more", "url", "next_page"}}  # fmt: skip


def endpoint_of(method: str, path: str) -> Endpoint | None:
    for e in ENDPOINTS:
        pattern = re.escape(e.path).replace(re.escape("{id}"), "[A-Za-z0-9_]+") + "$"
        if e.method == method and re.match(pattern, path):
            if e.path.endswith("{id}") and path.endswith("/search"):
                continue  # /v1/payment_intents/search is its own endpoint, not an id
            return e
    return None


@dataclass
class Exchange:
    """One request the adapter sent and what the server answered."""

    method: str
    path: str
    params: dict[str, Any]
    status: int
    body: Any


@dataclass
class Recorder:
    """httpx event hooks that keep every exchange (the adapter's own client, real HTTP)."""

    exchanges: list[Exchange] = field(default_factory=list)

    async def on_response(self, response: httpx.Response) -> None:
        request = response.request
        raw = request.url.query.decode() if request.method == "GET" else request.content.decode()
        await response.aread()
        body = (
            response.json()
            if response.headers.get("content-type", "").startswith("application/json")
            else None
        )
        self.exchanges.append(
            Exchange(request.method, request.url.path, decode_form(raw), response.status_code, body)
        )

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(event_hooks={"response": [self.on_response]}, timeout=30)


def parameter_violations(exchanges: list[Exchange]) -> list[str]:
    """Requests to an endpoint the contract does not know, or naming a parameter Stripe does not
    define on that endpoint (at any depth)."""
    found: list[str] = []
    for x in exchanges:
        endpoint = endpoint_of(x.method, x.path)
        if endpoint is None:
            found.append(f"{x.method} {x.path}: not an endpoint of the contract")
            continue
        unknown = unknown_parameter(params_tree(endpoint.sdk, endpoint.params), x.params)
        if unknown is not None:
            found.append(
                f"{key(endpoint.method, endpoint.path)}: sends {unknown}, which Stripe does not define"
            )
    return found


def field_violations(obj: Any, resource: str) -> list[str]:
    """Fields Stripe declares that `obj` lacks (at every depth of the objects it holds), top-level
    fields it declares non-null that are null, fields it shows that Stripe does not declare, and
    the wrong `object` name. A list or search result is checked item by item."""
    if not isinstance(obj, dict):
        return [f"{resource}: not an object"]
    if obj.get("object") in _LIST_FIELDS:
        problems = [f"list: lacks {f}" for f in sorted(_LIST_FIELDS[obj["object"]] - set(obj))]
        for item in obj.get("data", []):
            problems += field_violations(item, resource)
        return problems
    shape = resource_tree(resource)
    problems = [] if obj.get("object") == shape["object"] else [
        f"{resource}: object is {obj.get('object')!r}, Stripe says {shape['object']!r}"
    ]  # fmt: skip
    return problems + _fields(obj, shape["fields"], shape["object"], top=True)


def _fields(obj: dict[str, Any], fields: dict[str, Any], where: str, *, top: bool) -> list[str]:
    problems = [
        f"{where}.{name}: shown, but Stripe does not declare it" for name in sorted(set(obj) - set(fields))
    ]
    for name, spec in fields.items():
        if name not in obj:
            problems.append(f"{where}.{name}: missing")
            continue
        value = obj[name]
        if value is None and top and not spec["optional"]:
            problems.append(f"{where}.{name}: null, but Stripe declares it non-null")
        inner = spec["inner"]
        if inner is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                problems += _fields(item, inner, f"{where}.{name}", top=False)
    return problems


def object_violations(exchanges: list[Exchange]) -> list[str]:
    """Every successful answer checked against the resource class of its endpoint."""
    found: list[str] = []
    for x in exchanges:
        endpoint = endpoint_of(x.method, x.path)
        if endpoint is not None and x.status == 200:
            found += [
                f"{key(endpoint.method, endpoint.path)}: {p}"
                for p in field_violations(x.body, endpoint.resource)
            ]
    return found


def instance(tree: dict[str, Any]) -> dict[str, Any]:
    """A value for every parameter in the tree, at every depth (the values mean nothing)."""
    return {name: "x" if sub is None else instance(sub) for name, sub in tree.items()}


def form_encode(params: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's bracket notation."""
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        label = f"{prefix}[{name}]" if prefix else name
        pairs += form_encode(value, label) if isinstance(value, dict) else [(label, str(value))]
    return pairs


def probe_path(endpoint: Endpoint) -> str:
    return endpoint.path.replace("{id}", quote("x_contract_probe"))
