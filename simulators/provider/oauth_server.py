"""The simulators' OAuth 2.0 authorization server, built on authlib: authorization code with PKCE S256
only (RFC 6749, 7636, 9700), refresh-token rotation with reuse detection, RFC 7009 revocation, RFC 7662
introspection (client authentication required) and RFC 8414 metadata. Errors are RFC 6749 §5.2
`{"error": "invalid_grant", "error_description": ...}`.

authlib has no Starlette server integration: `FormRequest` is the request it reads (the handler parses
the body first), `handle_response` turns its (status, body, headers) into a Starlette response. The
state is the simulator's SQLite store (tokens and codes as SHA-256 hashes)."""

from __future__ import annotations

import hmac
import json
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    InvalidRequestError,
    OAuth2Payload,
    OAuth2Request,
    UnsupportedTokenTypeError,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from starlette.datastructures import Headers
from starlette.responses import Response

from simulators.provider.catalogs import ACCOUNT_SCOPE, all_scopes
from simulators.provider.store import SimulatorStore, token_hash

CODE_TTL_SECONDS = 60
#: a public client (PKCE) may use the token and revocation endpoints; introspection needs the secret,
#: in HTTP Basic only (RFC 6749 §2.3.1: MUST support; the secret in the form is NOT RECOMMENDED)
PUBLIC_OR_SECRET = ["client_secret_basic", "none"]
SECRET_ONLY = ["client_secret_basic"]
GRANT_TYPES = ("authorization_code", "refresh_token")


class FormPayload(OAuth2Payload):  # type: ignore[misc]
    """Form or query parameters; `datalist` keeps repeats so authlib can refuse them."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._datalist[key].append(value)
        self._data = {key: values[-1] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class FormRequest(OAuth2Request):  # type: ignore[misc]
    """What authlib reads: method, URL, headers and the already-parsed parameters."""

    def __init__(self, method: str, uri: str, headers: Headers, pairs: list[tuple[str, str]]) -> None:
        super().__init__(method, uri, headers=headers)
        self.payload = FormPayload(pairs)

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data


@dataclass(frozen=True)
class SimClient(ClientMixin):  # type: ignore[misc]
    """The one registered client (Quartermaster): one redirect URI, code + refresh grants."""

    client_id: str
    client_secret: str
    redirect_uri: str

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # redirect_uri is required on every authorization request, and exact

    def get_allowed_scope(self, scope: str | None) -> str:
        # the server has checked the scopes exist (validate_requested_scope); none asked: the account
        return scope or ACCOUNT_SCOPE

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in (SECRET_ONLY if endpoint == "introspection" else PUBLIC_OR_SECRET)

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in GRANT_TYPES


@dataclass(frozen=True)
class CodeRecord:
    """An authorization code's row (authlib's AuthorizationCodeMixin)."""

    code_hash: str
    account_id: str
    redirect_uri: str
    scope: str
    code_challenge: str
    code_challenge_method: str = "S256"

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass(frozen=True)
class TokenRecord:
    """A token's row (authlib's TokenMixin)."""

    row: dict[str, Any]

    def check_client(self, client: SimClient) -> bool:
        return bool(self.row["client_id"] == client.client_id)

    def get_scope(self) -> str:
        return str(self.row["scopes"])

    def get_expires_in(self) -> int:
        expires = self.row["expires_at"]
        return 0 if expires is None else max(0, expires - int(time.time()))

    def is_expired(self) -> bool:
        expires = self.row["expires_at"]
        return expires is not None and expires <= int(time.time())

    def is_revoked(self) -> bool:
        return self.row["revoked_at"] is not None


class S256Challenge(CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 only, required on every authorization request (RFC 9700 §2.1.1)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE with code_challenge_method=S256 is required")
        super().validate_code_challenge(grant, redirect_uri)


class UnsupportedTokenType(UnsupportedTokenTypeError):  # type: ignore[misc]
    """RFC 7009 §2.2.1 and RFC 6749 §5.2: a 400 (authlib answers 401, which means client auth)."""

    status_code = 400


def check_hint(form: dict[str, str]) -> None:
    """`token` is required; a `token_type_hint` must be one of the RFC 7009 values."""
    if not form.get("token"):
        raise InvalidRequestError("form field 'token' is required")
    if form.get("token_type_hint", "access_token") not in ("access_token", "refresh_token"):
        raise UnsupportedTokenType()


class OAuthServer(AuthorizationServer):  # type: ignore[misc]
    """One simulator's authorization server over its store."""

    def __init__(self, *, store: SimulatorStore, client: SimClient, provider: str, scopes: set[str],
                 access_ttl: int) -> None:  # fmt: skip
        super().__init__(scopes_supported=sorted(scopes))
        self.store, self.client, self.provider, self.access_ttl = store, client, provider, access_ttl
        self.register_token_generator("default", self._generate)
        self.register_grant(CodeGrant, [S256Challenge(required=True)])
        self.register_grant(RotatingRefreshGrant)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)

    def query_client(self, client_id: str) -> SimClient | None:
        return self.client if client_id == self.client.client_id else None

    def _generate(self, *, grant_type: str, client: SimClient, user: dict[str, Any] | None = None,
                  scope: str | None = None, expires_in: int | None = None,
                  include_refresh_token: bool = True) -> dict[str, Any]:  # fmt: skip
        user = user or {}
        token: dict[str, Any] = {
            "access_token": f"{self.provider}_at_{secrets.token_urlsafe(32)}",
            "token_type": "Bearer",
            "expires_in": self.access_ttl,
            "scope": scope or ACCOUNT_SCOPE,
        }
        if include_refresh_token:
            token["refresh_token"] = f"{self.provider}_rt_{secrets.token_urlsafe(32)}"
        # whose account this is: the client checks it is the person it asked for (login_hint is a hint)
        token.update(account_id=user.get("account_id"), link_action="linked_existing",
                     primary_email=user.get("email", ""), email_verified=True)  # fmt: skip
        return token

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """The pair's rows; `source` ties every token of one grant together (for revocation)."""
        if request.authorization_code is not None:
            source = f"code:{request.authorization_code.code_hash}"
        else:
            source = request.refresh_token.row["source"]
        now = int(time.time())
        rows: list[tuple[str, str, int | None]] = [(token["access_token"], "access", now + self.access_ttl)]
        if "refresh_token" in token:
            rows.append((token["refresh_token"], "refresh", None))
        for value, kind, expires in rows:
            self.store.execute(
                "INSERT INTO tokens (token_hash, token_id, kind, account_id, client_id, scopes, source, "
                "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                token_hash(value), f"tok_{secrets.token_hex(8)}", kind, request.user["account_id"],
                request.client.client_id, token["scope"], source, now, expires,
            )  # fmt: skip

    def revoke_grant(self, source: str) -> None:
        """Every token one grant issued (a leaked code or refresh token: RFC 6749 §4.1.2, RFC 9700)."""
        self.store.execute(
            "UPDATE tokens SET revoked_at = ? WHERE source = ? AND revoked_at IS NULL",
            int(time.time()),
            source,
        )

    def token_record(self, value: str) -> TokenRecord | None:
        row = self.store.one("SELECT * FROM tokens WHERE token_hash = ?", token_hash(value))
        return TokenRecord(row) if row is not None else None

    def create_oauth2_request(self, request: Any) -> Any:
        return request  # the handlers build the FormRequest (they read the body asynchronously)

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Response:
        out = dict(headers)
        if isinstance(body, dict):
            out.setdefault("Cache-Control", "no-store")
            out["Content-Type"] = "application/json"
            return Response(json.dumps(body), status_code=status, headers=out)
        if "Location" in out and status == 302:
            status = 303  # every redirect answers a human's request: the browser follows with GET
        return Response(body or b"", status_code=status, headers=out)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = PUBLIC_OR_SECRET
    server: OAuthServer

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        self.server.store.execute(
            "INSERT INTO oauth_codes (code_hash, account_id, client_id, redirect_uri, code_challenge, "
            "scopes, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            token_hash(code), request.user["account_id"], request.client.client_id,
            data.get("redirect_uri") or "", data.get("code_challenge") or "", request.scope,
            int(time.time()) + CODE_TTL_SECONDS,
        )  # fmt: skip

    def query_authorization_code(self, code: str, client: SimClient) -> CodeRecord | None:
        """The code, used up by this presentation whatever follows; a second presentation revokes
        what the first one issued."""
        store, now, code_hash = self.server.store, int(time.time()), token_hash(code)
        row = store.one("SELECT * FROM oauth_codes WHERE code_hash = ?", code_hash)
        if row is None:
            return None
        if row["used_at"] is not None:
            self.server.revoke_grant(f"code:{code_hash}")
            return None
        store.execute("UPDATE oauth_codes SET used_at = ? WHERE code_hash = ?", now, code_hash)
        if row["expires_at"] <= now or row["client_id"] != client.client_id:
            return None
        return CodeRecord(code_hash=code_hash, account_id=row["account_id"], scope=row["scopes"],
                          redirect_uri=row["redirect_uri"], code_challenge=row["code_challenge"])  # fmt: skip

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        return None  # already marked used (a used code is remembered to detect replays)

    def authenticate_user(self, authorization_code: CodeRecord) -> dict[str, Any] | None:
        return self.server.store.account(authorization_code.account_id)


class RotatingRefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    """A refresh token works once; presenting a used one revokes its whole grant (RFC 9700 §4.14.2)."""

    TOKEN_ENDPOINT_AUTH_METHODS = PUBLIC_OR_SECRET
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: OAuthServer

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRecord | None:
        record = self.server.token_record(refresh_token)
        if record is None or record.row["kind"] != "refresh":
            return None
        if record.is_revoked():
            self.server.revoke_grant(record.row["source"])
            return None
        return record

    def authenticate_user(self, refresh_token: TokenRecord) -> dict[str, Any] | None:
        return self.server.store.account(refresh_token.row["account_id"])

    def revoke_old_credential(self, refresh_token: TokenRecord) -> None:
        self.server.store.execute(
            "UPDATE tokens SET revoked_at = ? WHERE token_id = ?",
            int(time.time()),
            refresh_token.row["token_id"],
        )


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009 at `/oauth/revoke`: 200 for unknown tokens too. A refresh token takes its grant's access
    tokens with it (§2.1)."""

    CLIENT_AUTH_METHODS = PUBLIC_OR_SECRET
    server: OAuthServer

    def check_params(self, request: OAuth2Request, client: SimClient) -> None:
        check_hint(request.form)

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        return self.server.token_record(token_string)

    def revoke_token(self, token: TokenRecord, request: OAuth2Request) -> None:
        if token.row["kind"] == "refresh":
            self.server.revoke_grant(token.row["source"])
        self.server.store.execute(
            "UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
            int(time.time()), token.row["token_id"],
        )  # fmt: skip


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662 at `/introspect`, for the registered client authenticating with its secret. Anything
    not active is exactly `{"active": false}`."""

    CLIENT_AUTH_METHODS = SECRET_ONLY
    server: OAuthServer

    def check_params(self, request: OAuth2Request, client: SimClient) -> None:
        check_hint(request.form)

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        return self.server.token_record(token_string)

    def check_permission(self, token: TokenRecord, client: SimClient, request: OAuth2Request) -> bool:
        # a refresh token is never presented to a resource server: it introspects as inactive
        return token.check_client(client) and token.row["kind"] != "refresh"

    def introspect_token(self, token: TokenRecord) -> dict[str, Any]:
        row = token.row
        answer: dict[str, Any] = {
            "active": True,
            "scope": row["scopes"],
            "sub": row["account_id"],
            "aud": self.server.provider,
            "client_id": row["client_id"],
            "token_type": "Bearer",
            "iat": row["created_at"],
        }
        if row["expires_at"] is not None:
            answer["exp"] = row["expires_at"]
        return answer


def metadata(server: OAuthServer, issuer: str) -> dict[str, Any]:
    """RFC 8414 `/.well-known/oauth-authorization-server` for a server reached at `issuer`."""
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        "token_endpoint": f"{issuer}/oauth/token",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "introspection_endpoint": f"{issuer}/introspect",
        "scopes_supported": server.scopes_supported,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(GRANT_TYPES),
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": PUBLIC_OR_SECRET,
        "revocation_endpoint_auth_methods_supported": PUBLIC_OR_SECRET,
        "introspection_endpoint_auth_methods_supported": SECRET_ONLY,
    }


def new_server(*, store: SimulatorStore, client: SimClient, provider: str, catalog: Any,
               access_ttl: int) -> OAuthServer:  # fmt: skip
    return OAuthServer(store=store, client=client, provider=provider, scopes=all_scopes(catalog),
                       access_ttl=access_ttl)  # fmt: skip
