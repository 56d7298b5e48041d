"""HttpProvider against respx routes: the exact request of every contract endpoint, and the mapping of
every failure into providers.errors. Also the registry."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx

from models.provider import TermsAcceptance
from models.secret import Secret
from providers import registry as registry_module
from providers.contract import Provider
from providers.errors import PermanentProviderError, RetryableProviderError
from providers.http_provider import HttpProvider
from providers.registry import InvalidAdapterError, ProviderRegistry, UnknownProviderError
from quartermaster.config import Settings

BASE = "http://cloud.provider.test"
ACCOUNT = Secret("acct_token_SECRET")
RESOURCE = {
    "resource_id": "res_1",
    "service_id": "cloud/r2",
    "name": "b1",
    "status": "complete",
    "configuration": {},
    "charge": {"amount": {"amount": 500, "currency": "usd"}, "payment_reference": "pi_1"},
    "error_message": None,
    "needs_information_schema": None,
    "account_id": "acct_1",
    "created_at": 1,
}
CATALOG = {
    "provider": {
        "name": "cloud",
        "description": "d",
        "tos_url": "t",
        "terms_version": "v1",
        "privacy_policy_url": "p",
    },
    "services": [
        {
            "service_id": "cloud/workers",
            "kind": "deployable",
            "description": "w",
            "pricing": {"type": "free"},
            "configuration_schema": {"type": "object"},
            "scopes": ["workers:deploy"],
            "reversible": True,
            "llm_context": "",
        }
    ],
}


@pytest.fixture
async def provider() -> AsyncIterator[HttpProvider]:
    async with httpx.AsyncClient() as client:
        yield HttpProvider(name="cloud", base_url=BASE + "/", http_client=client, timeout=2.0)


def _only_call(route: respx.Route) -> httpx.Request:
    assert route.call_count == 1
    return route.calls.last.request


def _json(request: httpx.Request) -> Any:
    return json.loads(request.content)


def _form(request: httpx.Request) -> dict[str, str]:
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


@respx.mock
async def test_catalog(provider: HttpProvider) -> None:
    route = respx.get(f"{BASE}/catalog").respond(200, json=CATALOG)
    catalog = await provider.catalog()
    assert catalog.provider.terms_version == "v1" and catalog.services[0].service_id == "cloud/workers"
    request = _only_call(route)
    assert "authorization" not in request.headers and "idempotency-key" not in request.headers


@respx.mock
async def test_lookup_account(provider: HttpProvider) -> None:
    route = respx.post(f"{BASE}/accounts/lookup").respond(200, json={"exists": True})
    assert (await provider.lookup_account(assertion=Secret("jwt.a.b"))).exists is True
    request = _only_call(route)
    assert _json(request) == {"assertion": "jwt.a.b"}
    assert "authorization" not in request.headers


@respx.mock
async def test_create_account(provider: HttpProvider) -> None:
    route = respx.post(f"{BASE}/accounts").respond(
        201,
        json={
            "account_id": "acct_1",
            "link_action": "created",
            "credential": "cloud_acct_x",
            "token_type": "Bearer",
            "scopes": ["account:manage"],
            "expires_at": None,
        },
    )
    at = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    terms = TermsAcceptance(terms_version="v1", accepted_at=at, accepted_by="p1", approval_id="ap1")
    account = await provider.create_account(
        assertion=Secret("jwt"), terms=terms, idempotency_key="acct:req-1"
    )
    assert account.account_id == "acct_1" and account.credential.reveal() == "cloud_acct_x"
    assert account.link_action == "created"
    request = _only_call(route)
    assert request.headers["idempotency-key"] == "acct:req-1"
    assert _json(request) == {
        "assertion": "jwt",
        "terms": {
            "terms_version": "v1",
            "accepted_at": "2026-05-01T12:00:00Z",
            "accepted_by": "p1",
            "approval_id": "ap1",
        },
    }


def test_authorization_url(provider: HttpProvider) -> None:
    url = provider.authorization_url(
        client_id="quartermaster",
        redirect_uri="http://gw/oauth/callback",
        state="st",
        code_challenge="ch" * 22,
        scopes=["account:manage", "dns:read"],
        login_hint="ada@example.com",
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{BASE}/oauth/authorize"
    assert {k: v[0] for k, v in parse_qs(parts.query).items()} == {
        "response_type": "code",
        "client_id": "quartermaster",
        "redirect_uri": "http://gw/oauth/callback",
        "scope": "account:manage dns:read",
        "state": "st",
        "code_challenge": "ch" * 22,
        "code_challenge_method": "S256",
        "login_hint": "ada@example.com",
    }


TOKENS = {
    "access_token": "at",
    "token_type": "Bearer",
    "expires_in": 3600,
    "refresh_token": "rt",
    "scope": "account:manage dns:read",
    "account_id": "acct_9",
    "link_action": "linked_existing",
}


@respx.mock
async def test_exchange_code_and_refresh(provider: HttpProvider) -> None:
    route = respx.post(f"{BASE}/oauth/token").respond(200, json=TOKENS)
    account = await provider.exchange_code(
        client_id="quartermaster",
        code=Secret("c0de"),
        code_verifier=Secret("v" * 43),
        redirect_uri="http://gw/cb",
    )
    assert (account.account_id, account.link_action) == ("acct_9", "linked_existing")
    assert account.credential.reveal() == "at" and account.refresh_token == Secret("rt")
    assert account.scopes == ["account:manage", "dns:read"] and account.expires_at is not None
    assert _form(_only_call(route)) == {
        "grant_type": "authorization_code",
        "code": "c0de",
        "code_verifier": "v" * 43,
        "redirect_uri": "http://gw/cb",
        "client_id": "quartermaster",
    }
    await provider.refresh_account(client_id="quartermaster", refresh_token=Secret("rt"))
    assert _form(route.calls.last.request) == {
        "grant_type": "refresh_token",
        "refresh_token": "rt",
        "client_id": "quartermaster",
    }


@respx.mock
async def test_resource_endpoints(provider: HttpProvider) -> None:
    create = respx.post(f"{BASE}/resources").respond(201, json=RESOURCE)
    get = respx.get(f"{BASE}/resources/res_1").respond(200, json=RESOURCE)
    remove = respx.post(f"{BASE}/resources/res_1/remove").respond(200, json={**RESOURCE, "status": "removed"})
    submit = respx.post(f"{BASE}/resources/res_1/submit_information").respond(200, json=RESOURCE)
    resource = await provider.create_resource(
        account=ACCOUNT,
        service_id="cloud/r2",
        name="b1",
        configuration={"location": "weur"},
        payment_token=Secret("spt_123"),
        idempotency_key="provision-r1:create",
    )
    assert resource.charge is not None and resource.charge.amount.amount == 500
    request = _only_call(create)
    assert request.headers["authorization"] == "Bearer acct_token_SECRET"
    assert request.headers["idempotency-key"] == "provision-r1:create"
    assert _json(request) == {
        "service_id": "cloud/r2",
        "name": "b1",
        "configuration": {"location": "weur"},
        "payment_token": "spt_123",
    }
    await provider.create_resource(
        account=ACCOUNT,
        service_id="cloud/workers",
        name="w",
        configuration={},
        payment_token=None,
        idempotency_key="k2",
    )
    assert _json(create.calls.last.request)["payment_token"] is None

    assert (await provider.get_resource(account=ACCOUNT, resource_id="res_1")).status == "complete"
    request = _only_call(get)
    assert (
        request.headers["authorization"] == "Bearer acct_token_SECRET"
        and "idempotency-key" not in request.headers
    )

    removed = await provider.remove_resource(account=ACCOUNT, resource_id="res_1", idempotency_key="rm-1")
    assert removed.status == "removed"
    request = _only_call(remove)
    assert request.headers["idempotency-key"] == "rm-1" and _json(request) == {}

    info = {"registrant_contact": {"name": "Ada", "email": "ada@example.com", "country": "GB"}}
    await provider.submit_information(
        account=ACCOUNT, resource_id="res_1", information=info, idempotency_key="si"
    )
    request = _only_call(submit)
    assert request.headers["idempotency-key"] == "si" and _json(request) == {"information": info}


@respx.mock
async def test_path_ids_cannot_escape_their_segment(provider: HttpProvider) -> None:
    route = respx.get(url__regex=r".*").respond(200, json=RESOURCE)
    await provider.get_resource(account=ACCOUNT, resource_id="../credentials?x=1")
    assert route.calls.last.request.url.raw_path == b"/resources/..%2Fcredentials%3Fx%3D1"


@respx.mock
async def test_credential_endpoints(provider: HttpProvider) -> None:
    mint = respx.post(f"{BASE}/credentials").respond(
        201,
        json={
            "credential_id": "cred_1",
            "token": "cloud_sk_x",
            "token_type": "Bearer",
            "scopes": ["r2:read"],
            "expires_at": "2026-05-01T13:00:00+00:00",
            "account_id": "acct_1",
            "resource_id": "res_1",
        },
    )
    revoke = respx.post(f"{BASE}/credentials/cred_1/revoke").respond(
        200, json={"credential_id": "cred_1", "revoked": True}
    )
    introspect = respx.post(f"{BASE}/introspect").respond(200, json={"active": False})
    cred = await provider.mint_credential(
        account=ACCOUNT, resource_id="res_1", scopes=["r2:read"], ttl_seconds=600, idempotency_key="mint-1"
    )
    assert cred.token.reveal() == "cloud_sk_x" and cred.expires_at.tzinfo is not None
    request = _only_call(mint)
    assert request.headers["idempotency-key"] == "mint-1"
    assert request.headers["authorization"] == "Bearer acct_token_SECRET"
    assert _json(request) == {"resource_id": "res_1", "scopes": ["r2:read"], "ttl_seconds": 600}

    await provider.revoke_credential(account=ACCOUNT, credential_id="cred_1")
    request = _only_call(revoke)
    assert request.headers["authorization"] == "Bearer acct_token_SECRET"
    assert request.headers["idempotency-key"] == "revoke:cred_1"

    result = await provider.introspect(token=cred.token)
    assert result.active is False and result.scope is None
    request = _only_call(introspect)
    assert _form(request) == {"token": "cloud_sk_x", "client_id": "quartermaster"}
    assert "authorization" not in request.headers


SECRET_BODY = {"error": {"code": "invalid_configuration", "message": "token sk_live_LEAK is wrong"}}


@respx.mock
@pytest.mark.parametrize(
    ("response", "kind", "code", "status"),
    [
        (httpx.Response(400, json=SECRET_BODY), PermanentProviderError, "invalid_configuration", 400),
        (
            httpx.Response(401, json={"error": {"code": "assertion_expired", "message": "x"}}),
            PermanentProviderError,
            "assertion_expired",
            401,
        ),
        (
            httpx.Response(402, json={"error": {"code": "payment_declined", "message": "x"}}),
            PermanentProviderError,
            "payment_declined",
            402,
        ),
        (
            httpx.Response(403, json={"error": {"code": "terms_acceptance_required", "message": "x"}}),
            PermanentProviderError,
            "terms_acceptance_required",
            403,
        ),
        (
            httpx.Response(409, json={"error": {"code": "idempotency_conflict", "message": "x"}}),
            PermanentProviderError,
            "idempotency_conflict",
            409,
        ),
        (
            httpx.Response(404, text="<html>not here sk_live_LEAK</html>"),
            PermanentProviderError,
            "http_404",
            404,
        ),
        (
            httpx.Response(400, json={"error": {"code": "Bad Code sk_live_LEAK", "message": "x"}}),
            PermanentProviderError,
            "http_400",
            400,
        ),
        (
            httpx.Response(500, json={"error": {"code": "simulated_fault", "message": "sk_live_LEAK"}}),
            RetryableProviderError,
            "simulated_fault",
            500,
        ),
        (httpx.Response(502, text="bad gateway"), RetryableProviderError, "provider_unavailable", 502),
        (
            httpx.Response(503, json={"error": {"code": "payment_unavailable", "message": "x"}}),
            RetryableProviderError,
            "payment_unavailable",
            503,
        ),
        (
            httpx.Response(429, json={"error": {"code": "rate_limited", "message": "x"}}),
            RetryableProviderError,
            "rate_limited",
            429,
        ),
        (httpx.Response(200, text="not json sk_live_LEAK"), PermanentProviderError, "invalid_response", 200),
        (
            httpx.Response(201, json={"resource_id": "r", "token": "sk_live_LEAK"}),
            PermanentProviderError,
            "invalid_response",
            None,
        ),
    ],
)
async def test_http_failures_map_to_typed_errors(
    provider: HttpProvider, response: httpx.Response, kind: type[Exception], code: str, status: int | None
) -> None:
    respx.post(f"{BASE}/resources").mock(return_value=response)
    with pytest.raises(kind) as info:
        await provider.create_resource(
            account=ACCOUNT,
            service_id="cloud/r2",
            name="b",
            configuration={},
            payment_token=Secret("spt"),
            idempotency_key="k",
        )
    err = info.value
    assert type(err) is kind and err.code == code and err.status == status  # type: ignore[attr-defined]
    text = str(err) + repr(err.args)
    assert "LEAK" not in text and "acct_token_SECRET" not in text and "spt" not in text


@respx.mock
@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", 7.0), (None, None), ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)
async def test_rate_limit_carries_retry_after(
    provider: HttpProvider, retry_after: str | None, expected: float | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    respx.get(f"{BASE}/catalog").respond(
        429, headers=headers, json={"error": {"code": "rate_limited", "message": ""}}
    )
    with pytest.raises(RetryableProviderError) as info:
        await provider.catalog()
    assert info.value.retry_after == expected


@respx.mock
@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ConnectTimeout("t"), "timeout"),
        (httpx.ReadTimeout("t"), "timeout"),
        (httpx.ConnectError("refused"), "connection_error"),
        (httpx.RemoteProtocolError("peer closed"), "connection_error"),
        (httpx.ReadError("reset"), "connection_error"),
    ],
)
async def test_transport_failures_are_retryable(provider: HttpProvider, exc: Exception, code: str) -> None:
    respx.post(f"{BASE}/credentials").mock(side_effect=exc)
    with pytest.raises(RetryableProviderError) as info:
        await provider.mint_credential(
            account=ACCOUNT, resource_id="r", scopes=[], ttl_seconds=60, idempotency_key="k"
        )
    assert info.value.code == code and info.value.__cause__ is exc and info.value.status is None


def test_http_provider_satisfies_the_protocol(provider: HttpProvider) -> None:
    assert isinstance(provider, Provider)
    assert "SECRET" not in repr(provider)


# registry


class PluginProvider(HttpProvider):
    pass


def plugin_factory(*, name: str, base_url: str | None) -> PluginProvider:
    return PluginProvider(name=name, base_url=base_url or "http://plugin.test")


def not_a_provider(*, name: str, base_url: str | None) -> object:
    return object()


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, providers={"cloud": "http://c.test", "db": "http://d.test"})


async def test_registry_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "discover_entry_points", lambda: [])
    registry = ProviderRegistry.from_settings(_settings(tmp_path))
    try:
        assert registry.names() == ["cloud", "db"] and "cloud" in registry
        cloud = registry.get("cloud")
        assert isinstance(cloud, HttpProvider) and cloud.base_url == "http://c.test" and cloud.name == "cloud"
        with pytest.raises(UnknownProviderError) as info:
            registry.get("nope")
        assert info.value.code == "unknown_provider" and isinstance(info.value, PermanentProviderError)
    finally:
        await registry.aclose()


async def test_registry_plugs_in_entry_point_adapters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eps = [
        EntryPoint(name="db", value=f"{__name__}:plugin_factory", group="quartermaster.providers"),
        EntryPoint(name="extra", value=f"{__name__}:plugin_factory", group="quartermaster.providers"),
    ]
    monkeypatch.setattr(registry_module, "discover_entry_points", lambda: eps)
    async with httpx.AsyncClient() as client:
        registry = ProviderRegistry.from_settings(_settings(tmp_path), http_client=client)
        db, extra = registry.get("db"), registry.get("extra")
        assert isinstance(db, PluginProvider) and db.base_url == "http://d.test"
        assert isinstance(extra, PluginProvider) and extra.base_url == "http://plugin.test"
        assert type(registry.get("cloud")) is HttpProvider
    bad = [EntryPoint(name="bad", value=f"{__name__}:not_a_provider", group="quartermaster.providers")]
    monkeypatch.setattr(registry_module, "discover_entry_points", lambda: bad)
    async with httpx.AsyncClient() as client:
        with pytest.raises(InvalidAdapterError):
            ProviderRegistry.from_settings(_settings(tmp_path), http_client=client)


@respx.mock
async def test_oauth_endpoints_with_a_client_secret_use_http_basic() -> None:
    """RFC 6749 §2.3.1: id and secret form-encoded, then Basic; never in the form beside it."""
    token = respx.post(f"{BASE}/oauth/token").respond(200, json=TOKENS)
    revoke = respx.post(f"{BASE}/oauth/revoke").respond(200, json={})
    introspect = respx.post(f"{BASE}/introspect").respond(200, json={"active": True, "scope": "a"})
    async with httpx.AsyncClient() as client:
        p = HttpProvider(name="cloud", base_url=BASE, http_client=client, client_secret=Secret("s:e/c"))
        await p.refresh_account(client_id="quartermaster", refresh_token=Secret("rt"))
        await p.revoke_token(token=Secret("rt"), token_type_hint="refresh_token")
        assert (await p.introspect(token=Secret("at"))).active is True
    expected = "Basic " + base64.b64encode(b"quartermaster:s%3Ae%2Fc").decode()
    for route, form in (
        (token, {"grant_type": "refresh_token", "refresh_token": "rt"}),
        (revoke, {"token": "rt", "token_type_hint": "refresh_token"}),
        (introspect, {"token": "at"}),
    ):
        request = _only_call(route)
        assert request.headers["authorization"] == expected
        assert _form(request) == form


@respx.mock
async def test_rfc_6749_errors_keep_their_code(provider: HttpProvider) -> None:
    """The OAuth endpoints answer `{"error": "invalid_grant", "error_description": ...}` (§5.2)."""
    respx.post(f"{BASE}/oauth/token").respond(
        400, json={"error": "invalid_grant", "error_description": "the code was used"}
    )
    respx.post(f"{BASE}/introspect").respond(401, json={"error": "invalid_client"})
    with pytest.raises(PermanentProviderError) as info:
        await provider.refresh_account(client_id="quartermaster", refresh_token=Secret("rt"))
    assert (info.value.code, info.value.status) == ("invalid_grant", 400)
    assert "the code was used" not in str(info.value)  # a body never reaches a message
    with pytest.raises(PermanentProviderError) as info:
        await provider.introspect(token=Secret("at"))
    assert (info.value.code, info.value.status) == ("invalid_client", 401)


@respx.mock
async def test_a_public_client_revokes_with_its_client_id(provider: HttpProvider) -> None:
    route = respx.post(f"{BASE}/oauth/revoke").respond(200, json={})
    await provider.revoke_token(token=Secret("rt"), token_type_hint="refresh_token")
    request = _only_call(route)
    assert _form(request) == {"token": "rt", "token_type_hint": "refresh_token", "client_id": "quartermaster"}
    assert "authorization" not in request.headers
