"""`HttpProvider`: the generic httpx adapter that speaks the provider contract
(docs/provider-contract.openapi.json) to any provider that implements it.

Failures map to providers.errors at this boundary: 429, 5xx, timeouts and connection errors are
retryable (same idempotency key); everything else is permanent with the contract's error `code` (the
contract's `{"error": {"code"}}`, or RFC 6749 §5.2's `{"error": "invalid_grant"}` from the OAuth
endpoints).

OAuth: Quartermaster links as a public client with PKCE S256; given a `client_secret` it authenticates
with HTTP Basic (RFC 6749 §2.3.1) at the token, revocation and introspection endpoints. Introspection
(RFC 7662) refuses an unauthenticated client with `invalid_client`.
Messages name the operation and status, never a response body (it could hold a secret).
"""

from __future__ import annotations

import base64
import re
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx
from pydantic import BaseModel, ValidationError

from models.catalog import Catalog
from models.provider import (
    AccountLookup,
    Charge,
    Credential,
    Introspection,
    ProviderAccount,
    Resource,
    TermsAcceptance,
)
from models.secret import Secret
from providers.errors import PermanentProviderError, RetryableProviderError
from quartermaster.http_transport import async_http_client

#: a code we pass on must look like one: a provider cannot smuggle text (or a secret) through it
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
M = TypeVar("M", bound=BaseModel)


def _seg(value: str) -> str:
    """One path segment, escaped so an id can never change the path."""
    return quote(value, safe="")


class HttpProvider:
    """A provider reached over HTTP. Owns its `httpx.AsyncClient` only when none is given."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        client_id: str = "quartermaster",
        client_secret: Secret | None = None,
        http_client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        catalog_ttl: float = 60.0,
    ) -> None:
        self.name = name
        #: a catalog changes rarely and is read by every quote and provisioning: keep it this long
        self.catalog_ttl = catalog_ttl
        self._catalog: tuple[float, Catalog] | None = None
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self.timeout = timeout
        self._owns_client = http_client is None
        self._http = http_client or async_http_client()

    async def aclose(self) -> None:
        """Close the HTTP client if this adapter created it."""
        if self._owns_client:
            await self._http.aclose()

    def __repr__(self) -> str:
        return f"HttpProvider(name={self.name!r}, base_url={self.base_url!r})"

    # the contract

    async def catalog(self) -> Catalog:
        """`GET /catalog`: provider metadata and services (cached `catalog_ttl` seconds)."""
        now = time.monotonic()
        if self._catalog is not None and now - self._catalog[0] < self.catalog_ttl:
            return self._catalog[1]
        catalog = self._parse(Catalog, await self._call("GET", "/catalog"), "catalog")
        self._catalog = (now, catalog)
        return catalog

    async def lookup_account(self, *, assertion: Secret) -> AccountLookup:
        """`POST /accounts/lookup`: does the asserted human have an account? (Uses up the assertion.)"""
        doc = await self._call("POST", "/accounts/lookup", json={"assertion": assertion.reveal()})
        return self._parse(AccountLookup, doc, "lookup_account")

    async def create_account(
        self, *, assertion: Secret, terms: TermsAcceptance, idempotency_key: str
    ) -> ProviderAccount:
        """`POST /accounts`: a new account for the asserted human, given acceptance of the current terms."""
        body = {"assertion": assertion.reveal(), "terms": terms.model_dump(mode="json")}
        doc = await self._call("POST", "/accounts", json=body, idempotency_key=idempotency_key)
        return self._parse(ProviderAccount, doc, "create_account")

    def authorization_url(
        self, *, client_id: str, redirect_uri: str, state: str, code_challenge: str, scopes: list[str],
        login_hint: str | None = None,
    ) -> str:  # fmt: skip
        """Where to send the human to consent to linking an existing account (PKCE S256)."""
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(scopes),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if login_hint:
            params["login_hint"] = login_hint
        return f"{self.base_url}/oauth/authorize?{urlencode(params)}"

    async def exchange_code(
        self, *, client_id: str, code: Secret, code_verifier: Secret, redirect_uri: str
    ) -> ProviderAccount:
        """`POST /oauth/token` (authorization_code): the linked account's access and refresh tokens."""
        form = {
            "grant_type": "authorization_code",
            "code": code.reveal(),
            "code_verifier": code_verifier.reveal(),
            "redirect_uri": redirect_uri,
        }
        doc = await self._oauth_call("/oauth/token", form, client_id)
        return self._token_response(doc, "exchange_code")

    async def refresh_account(self, *, client_id: str, refresh_token: Secret) -> ProviderAccount:
        """`POST /oauth/token` (refresh_token): new tokens; the old refresh token stops working."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token.reveal()}
        doc = await self._oauth_call("/oauth/token", form, client_id)
        return self._token_response(doc, "refresh_account")

    async def revoke_token(self, *, token: Secret, token_type_hint: str | None = None) -> None:
        """`POST /oauth/revoke` (RFC 7009): succeeds for unknown and already revoked tokens; a refresh
        token takes the access tokens of its grant with it."""
        form = {"token": token.reveal()}
        if token_type_hint:
            form["token_type_hint"] = token_type_hint
        await self._oauth_call("/oauth/revoke", form, self.client_id)

    async def create_resource(
        self, *, account: Secret, service_id: str, name: str, configuration: dict[str, Any],
        payment_token: Secret | None, idempotency_key: str,
    ) -> Resource:  # fmt: skip
        """`POST /resources`: create (and for paid services, charge) once per idempotency key."""
        body = {
            "service_id": service_id,
            "name": name,
            "configuration": configuration,
            "payment_token": payment_token.reveal() if payment_token is not None else None,
        }
        doc = await self._call(
            "POST", "/resources", json=body, account=account, idempotency_key=idempotency_key
        )
        return self._parse(Resource, doc, "create_resource")

    async def get_resource(self, *, account: Secret, resource_id: str) -> Resource:
        """`GET /resources/{id}`."""
        doc = await self._call("GET", f"/resources/{_seg(resource_id)}", account=account)
        return self._parse(Resource, doc, "get_resource")

    async def remove_resource(self, *, account: Secret, resource_id: str, idempotency_key: str) -> Resource:
        """`POST /resources/{id}/remove` (refused with `not_reversible` for e.g. domains)."""
        doc = await self._call(
            "POST", f"/resources/{_seg(resource_id)}/remove", json={}, account=account,
            idempotency_key=idempotency_key,
        )  # fmt: skip
        return self._parse(Resource, doc, "remove_resource")

    async def renew_resource(
        self, *, account: Secret, resource_id: str, period: int, due: datetime, payment_token: Secret,
        idempotency_key: str, amount: int | None = None,
    ) -> Charge:  # fmt: skip
        """`POST /resources/{id}/renew`: charge one more period, once per idempotency key."""
        body: dict[str, Any] = {
            "period": period,
            "due": due.isoformat(),
            "payment_token": payment_token.reveal(),
        }
        if amount is not None:
            body["amount"] = amount
        doc = await self._call(
            "POST", f"/resources/{_seg(resource_id)}/renew", json=body, account=account,
            idempotency_key=idempotency_key,
        )  # fmt: skip
        return self._parse(Charge, doc, "renew_resource")

    async def change_plan(
        self,
        *,
        account: Secret,
        resource_id: str,
        service_id: str,
        amount: int | None,
        payment_token: Secret | None,
        idempotency_key: str,
    ) -> Resource:
        """`POST /resources/{id}/plan`: move to another allowed service; an upgrade's prorated
        difference (`amount`) is charged through `payment_token`."""
        body: dict[str, Any] = {"service_id": service_id}
        if amount is not None and payment_token is not None:
            body |= {"amount": amount, "payment_token": payment_token.reveal()}
        doc = await self._call(
            "POST",
            f"/resources/{_seg(resource_id)}/plan",
            json=body,
            account=account,
            idempotency_key=idempotency_key,
        )
        return self._parse(Resource, doc, "change_plan")

    async def submit_information(
        self, *, account: Secret, resource_id: str, information: dict[str, Any], idempotency_key: str
    ) -> Resource:
        """`POST /resources/{id}/submit_information`: what a `needs_information` resource asked for."""
        doc = await self._call(
            "POST", f"/resources/{_seg(resource_id)}/submit_information", json={"information": information},
            account=account, idempotency_key=idempotency_key,
        )  # fmt: skip
        return self._parse(Resource, doc, "submit_information")

    async def mint_credential(
        self, *, account: Secret, resource_id: str, scopes: list[str], ttl_seconds: int, idempotency_key: str
    ) -> Credential:
        """`POST /credentials`: an API token for the resource with at most the service's scopes."""
        body = {"resource_id": resource_id, "scopes": scopes, "ttl_seconds": ttl_seconds}
        doc = await self._call(
            "POST", "/credentials", json=body, account=account, idempotency_key=idempotency_key
        )
        return self._parse(Credential, doc, "mint_credential")

    async def revoke_credential(self, *, account: Secret, credential_id: str) -> None:
        """`POST /credentials/{id}/revoke` (RFC 7009: succeeds for an already revoked credential)."""
        await self._call(
            "POST", f"/credentials/{_seg(credential_id)}/revoke", json={}, account=account,
            idempotency_key=f"revoke:{credential_id}",
        )  # fmt: skip

    async def introspect(self, *, token: Secret) -> Introspection:
        """`POST /introspect` (RFC 7662, form-encoded; needs `client_secret`)."""
        doc = await self._oauth_call("/introspect", {"token": token.reveal()}, self.client_id)
        return self._parse(Introspection, doc, "introspect")

    # the boundary

    async def _oauth_call(self, path: str, form: dict[str, str], client_id: str) -> Any:
        """An OAuth endpoint: HTTP Basic client authentication with the secret, else `client_id` in the
        form (a public client)."""
        if self._client_secret is None:
            return await self._call("POST", path, data={**form, "client_id": client_id})
        return await self._call("POST", path, data=form, basic=_basic(client_id, self._client_secret))

    def _token_response(self, doc: Any, op: str) -> ProviderAccount:
        if not isinstance(doc, dict) or not isinstance(doc.get("expires_in"), int):
            raise PermanentProviderError("invalid_response", f"{self.name} {op}: malformed token response")
        account = {
            "account_id": doc.get("account_id"),
            "link_action": doc.get("link_action", "linked_existing"),
            "credential": doc.get("access_token"),
            "scopes": str(doc.get("scope", "")).split(),
            "expires_at": datetime.now(UTC) + timedelta(seconds=doc["expires_in"]),
            "refresh_token": doc.get("refresh_token"),
            "primary_email": doc.get("primary_email"),
            "email_verified": doc.get("email_verified") is True,
        }
        return self._parse(ProviderAccount, account, op)

    def _parse(self, model: type[M], doc: Any, op: str) -> M:
        try:
            return model.model_validate(doc)
        except ValidationError:
            # the validation error would quote the body: keep only the fact
            raise PermanentProviderError(
                "invalid_response", f"{self.name} {op}: unexpected response"
            ) from None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: dict[str, str] | None = None,
        account: Secret | None = None,
        idempotency_key: str | None = None,
        basic: str | None = None,
    ) -> Any:
        headers = {"Accept": "application/json", "User-Agent": f"quartermaster/{self.client_id}"}
        if account is not None:
            headers["Authorization"] = f"Bearer {account.reveal()}"
        if basic is not None:
            headers["Authorization"] = basic
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        where = f"{self.name} {method} {path}"
        try:
            response = await self._http.request(
                method, self.base_url + path, json=json, data=data, headers=headers, timeout=self.timeout
            )
        except httpx.TimeoutException as exc:
            raise RetryableProviderError("timeout", f"{where}: timed out") from exc
        except httpx.TransportError as exc:
            raise RetryableProviderError("connection_error", f"{where}: {type(exc).__name__}") from exc
        status = response.status_code
        if status < 300:
            try:
                return response.json()
            except ValueError as exc:
                raise PermanentProviderError("invalid_response", f"{where}: not JSON", status=status) from exc
        code = _error_code(response)
        message = f"{where}: HTTP {status}"
        if status == 429:
            raise RetryableProviderError(
                code or "rate_limited", message, status=status, retry_after=_retry_after(response)
            )
        if status >= 500:
            raise RetryableProviderError(code or "provider_unavailable", message, status=status)
        raise PermanentProviderError(code or f"http_{status}", message, status=status)


def _basic(client_id: str, secret: Secret) -> str:
    """RFC 6749 §2.3.1: both parts form-encoded, then Basic."""
    pair = f"{quote(client_id, safe='')}:{quote(secret.reveal(), safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _error_code(response: httpx.Response) -> str | None:
    """The error code, if the body has the contract's `{"error": {"code"}}` or RFC 6749's
    `{"error": "code"}` shape and the code looks like a code."""
    try:
        doc = response.json()
    except ValueError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    code = error.get("code") if isinstance(error, dict) else error
    return code if isinstance(code, str) and _CODE.match(code) else None


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date)."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
