"""The simulators' authorization server as an independent, standard OAuth 2.0 client sees it: authlib's
httpx client over loopback, discovering the endpoints from RFC 8414 metadata. Code + PKCE S256,
refresh with rotation, RFC 7009 revocation, RFC 7662 introspection (client authentication required),
and every refusal by its RFC 6749 §5.2 / §4.1.2.1 code.

The properties a client relies on (`violations`) also run against deliberately broken servers
(rotation off, introspection open to unauthenticated callers, PKCE optional) and must catch each."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

from simulators.provider import oauth_server
from tests.fixtures.providers import ProviderSims

PROVIDER = "cloud"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:
        yield client


def _public(sims: ProviderSims) -> AsyncOAuth2Client:
    """Quartermaster's linking client: public, PKCE S256."""
    return AsyncOAuth2Client(
        client_id="quartermaster",
        token_endpoint_auth_method="none",
        revocation_endpoint_auth_method="none",
        redirect_uri=sims.redirect_uri,
        scope="account:manage",
        code_challenge_method="S256",
        timeout=5.0,
    )


def _confidential(sims: ProviderSims, secret: str | None = None) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id="quartermaster",
        client_secret=secret or sims.client_secret(PROVIDER).reveal(),
        token_endpoint_auth_method="client_secret_basic",
        timeout=5.0,
    )


async def _metadata(sims: ProviderSims, http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.get(f"{sims.urls[PROVIDER]}/.well-known/oauth-authorization-server")
    assert r.status_code == 200
    return dict(r.json())


async def _seeded_email(sims: ProviderSims, http: httpx.AsyncClient) -> str:
    email = f"o{secrets.token_hex(5)}@example.com"
    (await http.post(f"{sims.urls[PROVIDER]}/_sim/accounts", json={"email": email})).raise_for_status()
    return email


async def _consent(http: httpx.AsyncClient, url: str, decision: str = "approve") -> str:
    """Play the human on the consent page; the redirect's Location."""
    page = await http.get(url)
    if page.status_code in (302, 303):
        return page.headers["location"]  # refused before consent (an error redirect)
    match = re.search(r'name="request_id" value="([^"]+)"', page.text)
    assert page.status_code == 200 and match, page.text[:300]
    base = url.split("/oauth/authorize")[0]
    answer = await http.post(f"{base}/oauth/authorize", data={"request_id": match[1], "decision": decision})
    assert answer.status_code == 303
    return answer.headers["location"]


def _query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def _linked(sims: ProviderSims, http: httpx.AsyncClient, oauth: AsyncOAuth2Client) -> dict[str, Any]:
    """Code + PKCE S256 through authlib's client: the token response."""
    meta = await _metadata(sims, http)
    verifier = generate_token(48)
    url, state = oauth.create_authorization_url(
        meta["authorization_endpoint"], code_verifier=verifier, login_hint=await _seeded_email(sims, http)
    )
    assert "code_challenge_method=S256" in url
    location = await _consent(http, url)
    assert _query(location)["state"] == state
    token = await oauth.fetch_token(
        meta["token_endpoint"], authorization_response=location, code_verifier=verifier
    )
    return dict(token)


async def test_metadata_is_rfc_8414(provider_sims: ProviderSims, http: httpx.AsyncClient) -> None:
    meta = await _metadata(provider_sims, http)
    AuthorizationServerMetadata(meta).validate()  # authlib's own RFC 8414 checks
    assert meta["issuer"] == provider_sims.urls[PROVIDER].rstrip("/")
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "none" not in meta["introspection_endpoint_auth_methods_supported"]
    assert {"authorization_code", "refresh_token"} == set(meta["grant_types_supported"])
    for key in ("authorization_endpoint", "token_endpoint", "revocation_endpoint", "introspection_endpoint"):
        assert meta[key].startswith(meta["issuer"] + "/")


async def test_code_pkce_refresh_revoke_introspect(
    provider_sims: ProviderSims, http: httpx.AsyncClient
) -> None:
    meta = await _metadata(provider_sims, http)
    async with _public(provider_sims) as oauth, _confidential(provider_sims) as rs:
        first = await _linked(provider_sims, http, oauth)
        assert first["token_type"] == "Bearer" and first["scope"] == "account:manage"
        seen = (await rs.introspect_token(meta["introspection_endpoint"], token=first["access_token"])).json()
        assert (seen["active"], seen["client_id"], seen["aud"]) == (True, "quartermaster", PROVIDER)
        # refresh rotates: a new pair; the old refresh token is refused ...
        second = await oauth.refresh_token(meta["token_endpoint"], refresh_token=first["refresh_token"])
        assert second["refresh_token"] != first["refresh_token"]
        with pytest.raises(OAuthError) as info:
            await oauth.refresh_token(meta["token_endpoint"], refresh_token=first["refresh_token"])
        assert info.value.error == "invalid_grant"
        # ... and presenting it again revoked the grant it came from (RFC 9700 §4.14.2)
        after = await rs.introspect_token(meta["introspection_endpoint"], token=second["access_token"])
        assert after.json() == {"active": False}
        # revocation (RFC 7009): a refresh token takes its grant's access tokens with it
        third = await _linked(provider_sims, http, oauth)
        revoked = await oauth.revoke_token(
            meta["revocation_endpoint"], token=third["refresh_token"], token_type_hint="refresh_token"
        )
        assert revoked.status_code == 200
        for value in (third["access_token"], third["refresh_token"]):
            gone = await rs.introspect_token(meta["introspection_endpoint"], token=value)
            assert gone.json() == {"active": False}
        with pytest.raises(OAuthError) as info:
            await oauth.refresh_token(meta["token_endpoint"], refresh_token=third["refresh_token"])
        assert info.value.error == "invalid_grant"
        # an unknown token revokes "successfully" (RFC 7009 §2.2)
        unknown = await oauth.revoke_token(meta["revocation_endpoint"], token="never-issued")
        assert unknown.status_code == 200


async def _token_error(http: httpx.AsyncClient, url: str, **kw: Any) -> tuple[int, str, dict[str, Any]]:
    r = await http.post(url, **kw)
    body = r.json()
    assert set(body) <= {"error", "error_description", "error_uri"}, body  # RFC 6749 §5.2 shape
    return r.status_code, body["error"], dict(r.headers)


async def test_each_refusal_has_its_standard_code(
    provider_sims: ProviderSims, http: httpx.AsyncClient
) -> None:
    meta = await _metadata(provider_sims, http)
    token_url, secret = meta["token_endpoint"], provider_sims.client_secret(PROVIDER).reveal()
    public = {"client_id": "quartermaster"}
    code_form = {**public, "grant_type": "authorization_code", "redirect_uri": provider_sims.redirect_uri}
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("unknown grant type", {"data": {**public, "grant_type": "password"}}, 400, "unsupported_grant_type"),
        ("no code", {"data": code_form}, 400, "invalid_request"),
        ("unknown code", {"data": {**code_form, "code": "nope", "code_verifier": "v" * 43}},
         400, "invalid_grant"),
        ("unknown refresh token", {"data": {**public, "grant_type": "refresh_token", "refresh_token": "x"}},
         400, "invalid_grant"),
        ("no refresh token", {"data": {**public, "grant_type": "refresh_token"}}, 400, "invalid_request"),
        ("unknown client",
         {"data": {"client_id": "evil", "grant_type": "refresh_token", "refresh_token": "x"}},
         400, "invalid_client"),
        ("wrong secret", {"data": {"grant_type": "refresh_token", "refresh_token": "x"},
                          "auth": ("quartermaster", secret + "x")}, 401, "invalid_client"),
        ("a JSON body", {"json": {"grant_type": "refresh_token"}}, 400, "invalid_request"),
        ("introspection without authentication", {"data": {**public, "token": "x"}, "url": "introspection"},
         401, "invalid_client"),
        ("introspection with a wrong secret", {"data": {"token": "x"}, "url": "introspection",
                                               "auth": ("quartermaster", "wrong")}, 401, "invalid_client"),
        ("revocation without a token", {"data": public, "url": "revocation"}, 400, "invalid_request"),
        ("revocation with an unknown hint", {"data": {**public, "token": "x", "token_type_hint": "id_token"},
                                             "url": "revocation"}, 400, "unsupported_token_type"),
    ]  # fmt: skip
    for label, kw, status, error in cases:
        url = meta[f"{kw.pop('url')}_endpoint"] if "url" in kw else token_url
        got_status, got_error, headers = await _token_error(http, url, **kw)
        assert (got_status, got_error) == (status, error), label
        if status == 401:
            assert headers.get("www-authenticate", "").startswith("Basic"), label
        assert headers.get("cache-control") == "no-store", label
    # a refresh asking for more scope than was granted
    async with _public(provider_sims) as oauth:
        tokens = await _linked(provider_sims, http, oauth)
        with pytest.raises(OAuthError) as info:
            await oauth.refresh_token(token_url, refresh_token=tokens["refresh_token"], scope="dns:write")
        assert info.value.error == "invalid_scope"


async def test_authorization_endpoint_refusals(provider_sims: ProviderSims, http: httpx.AsyncClient) -> None:
    """Errors go back to the registered redirect URI with their RFC 6749 §4.1.2.1 code; an unknown
    client or unregistered redirect URI is never redirected to."""
    meta = await _metadata(provider_sims, http)
    email = await _seeded_email(provider_sims, http)
    async with _public(provider_sims) as oauth:
        verifier = generate_token(48)

        def url(**extra: str) -> str:
            built, _ = oauth.create_authorization_url(
                meta["authorization_endpoint"], code_verifier=verifier, login_hint=email, state="st"
            )
            parts = urlsplit(built)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()} | extra
            query = {k: v for k, v in query.items() if v != ""}
            return str(httpx.URL(parts._replace(query="").geturl(), params=query))

        for label, extra, error in [
            ("deny", {}, "access_denied"),
            ("no PKCE", {"code_challenge": "", "code_challenge_method": ""}, "invalid_request"),
            ("plain PKCE", {"code_challenge_method": "plain"}, "invalid_request"),
            ("token response type", {"response_type": "token"}, "unsupported_response_type"),
            ("unknown scope", {"scope": "everything"}, "invalid_scope"),
        ]:
            location = await _consent(http, url(**extra), "deny")
            assert location.startswith(provider_sims.redirect_uri + "?"), label
            assert (_query(location)["error"], _query(location)["state"]) == (error, "st"), label
        for extra in ({"client_id": "evil"}, {"redirect_uri": "http://evil.test/cb"}):
            page = await http.get(url(**extra))
            assert page.status_code == 400 and "location" not in page.headers


# the properties, and servers broken on purpose


async def violations(sims: ProviderSims, http: httpx.AsyncClient) -> list[str]:
    """What a standard client would find wrong with the server; [] for a correct one."""
    found: list[str] = []
    meta = await _metadata(sims, http)
    async with _public(sims) as oauth:
        tokens = await _linked(sims, http, oauth)
        await oauth.refresh_token(meta["token_endpoint"], refresh_token=tokens["refresh_token"])
        try:
            await oauth.refresh_token(meta["token_endpoint"], refresh_token=tokens["refresh_token"])
            found.append("a used refresh token was accepted again")
        except OAuthError:
            pass
        open_ = await http.post(
            meta["introspection_endpoint"],
            data={"token": tokens["access_token"], "client_id": "quartermaster"},
        )
        if open_.status_code == 200:
            found.append("introspection answered an unauthenticated client")
        verifier = generate_token(48)
        url, _ = oauth.create_authorization_url(
            meta["authorization_endpoint"], code_verifier=verifier, login_hint=await _seeded_email(sims, http)
        )
        no_pkce = re.sub(r"&code_challenge(_method)?=[^&]*", "", url)
        if "code=" in await _consent(http, no_pkce):
            found.append("an authorization request without PKCE got a code")
    return found


async def test_the_server_has_none_of_the_violations(
    provider_sims: ProviderSims, http: httpx.AsyncClient
) -> None:
    assert await violations(provider_sims, http) == []


def _no_rotation(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(oauth_server.RotatingRefreshGrant, "INCLUDE_NEW_REFRESH_TOKEN", False)
    mp.setattr(oauth_server.RotatingRefreshGrant, "revoke_old_credential", lambda self, token: None)


def _open_introspection(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(oauth_server.Introspection, "CLIENT_AUTH_METHODS", oauth_server.PUBLIC_OR_SECRET)
    mp.setattr(oauth_server, "SECRET_ONLY", oauth_server.PUBLIC_OR_SECRET)


def _optional_pkce(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(
        oauth_server.S256Challenge,
        "validate_code_challenge",
        CodeChallenge.validate_code_challenge,
    )


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (_no_rotation, "a used refresh token was accepted again"),
        (_open_introspection, "introspection answered an unauthenticated client"),
        (_optional_pkce, "an authorization request without PKCE got a code"),
    ],
)
async def test_a_broken_server_is_caught(
    provider_sims: ProviderSims,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    break_it: Callable[[pytest.MonkeyPatch], None],
    expected: str,
) -> None:
    break_it(monkeypatch)
    assert await violations(provider_sims, http) == [expected]
