"""Accounts at providers: reuse a connection, look up the principal, auto-create after terms
acceptance, or link an existing account with OAuth 2.0 + PKCE S256. Credentials stay in the store."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from temporalio import activity

from activities.errors import adapter_errors, permanent
from models.errors import ErrorCode
from models.provider import ProviderAccount
from models.provisioning import AccountInput, CompleteOAuth, ConnectionRef, OAuthStart, TermsRecord
from models.secret import Secret
from providers.assertions import AssertionSigner
from providers.errors import PermanentProviderError, ProviderError
from providers.registry import ProviderRegistry
from providers.store.interfaces import AccountStore

OAUTH_CLIENT_ID = "quartermaster"
#: the contract's code when an account exists for the identity (docs/providers.md)
ACCOUNT_EXISTS = "account_exists"


def pkce_pair() -> tuple[Secret, str]:
    """A PKCE verifier (secret) and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return Secret(verifier), challenge


class AccountActivities:
    def __init__(
        self, *, registry: ProviderRegistry, store: AccountStore, signer: AssertionSigner, public_url: str
    ) -> None:
        self._registry = registry
        self._store = store
        self._signer = signer
        self._redirect_uri = f"{public_url.rstrip('/')}/oauth/callback"

    def _assertion(self, inp: AccountInput) -> Secret:
        return self._signer.sign(subject=inp.customer_id, email=inp.principal_email, audience=inp.provider)

    async def _save(self, inp_provider: str, principal_id: str, account: ProviderAccount) -> ConnectionRef:
        await self._store.put_connection(
            principal_id=principal_id,
            provider=inp_provider,
            account_id=account.account_id,
            link_action=account.link_action,
            credential=account.credential,
            scopes=account.scopes,
        )
        return ConnectionRef(
            provider=inp_provider,
            principal_id=principal_id,
            account_id=account.account_id,
            link_action=account.link_action,
        )

    async def _connection(self, principal_id: str, provider: str) -> ConnectionRef | None:
        conn = await self._store.get_connection(principal_id=principal_id, provider=provider)
        if conn is None:
            return None
        return ConnectionRef(
            provider=provider,
            principal_id=principal_id,
            account_id=conn.account_id,
            link_action=conn.link_action,
        )

    @activity.defn(name="find_connection")
    async def find_connection(self, ref: TermsRecord) -> ConnectionRef | None:
        """An existing connection of this principal to this provider (terms_version is ignored)."""
        return await self._connection(ref.principal_id, ref.provider)

    @activity.defn(name="lookup_account")
    async def lookup_account(self, inp: AccountInput) -> bool:
        with adapter_errors("account lookup"):
            found = await self._registry.get(inp.provider).lookup_account(assertion=self._assertion(inp))
        return found.exists

    @activity.defn(name="terms_accepted")
    async def terms_accepted(self, rec: TermsRecord) -> bool:
        return (
            await self._store.accepted_terms(
                principal_id=rec.principal_id, provider=rec.provider, terms_version=rec.terms_version
            )
            is not None
        )

    @activity.defn(name="create_account")
    async def create_account(self, inp: AccountInput) -> ConnectionRef:
        if inp.terms is None:
            raise permanent(ErrorCode.TERMS_ACCEPTANCE_REQUIRED, "no terms acceptance to present")
        await self._store.record_terms(
            principal_id=inp.principal_id,
            provider=inp.provider,
            terms_version=inp.terms.terms_version,
            accepted_at=inp.terms.accepted_at,
            approval_id=inp.terms.approval_id,
        )
        # another request of the same principal may have made the account while this one waited for
        # the human, or a retry of this one after its connection was saved: use that account
        made = await self._connection(inp.principal_id, inp.provider)
        if made is not None:
            return made.model_copy(update={"reused": True})
        with adapter_errors("account creation"):
            try:
                account = await self._registry.get(inp.provider).create_account(
                    assertion=self._assertion(inp), terms=inp.terms, idempotency_key=inp.idempotency_key
                )
            except PermanentProviderError as exc:
                # the provider's 409 when a concurrent request of the same principal saved it first;
                # any other refusal, or no connection yet, stands
                made = await self._connection(inp.principal_id, inp.provider)
                if exc.code != ACCOUNT_EXISTS or made is None:
                    raise
                return made.model_copy(update={"reused": True})
        return await self._save(inp.provider, inp.principal_id, account)

    @activity.defn(name="start_oauth")
    async def start_oauth(self, inp: AccountInput) -> OAuthStart:
        """Make the PKCE pair (the verifier stays in the store) and the URL for the human."""
        verifier, challenge = pkce_pair()
        state = f"{inp.idempotency_key}.{secrets.token_urlsafe(16)}"
        await self._store.put_oauth_pending(
            state=state,
            principal_id=inp.principal_id,
            provider=inp.provider,
            verifier=verifier,
            redirect_uri=self._redirect_uri,
        )
        provider = self._registry.get(inp.provider)
        scopes: list[str] = []
        url = provider.authorization_url(
            client_id=OAUTH_CLIENT_ID,
            redirect_uri=self._redirect_uri,
            state=state,
            code_challenge=challenge,
            scopes=scopes,
            login_hint=inp.principal_email,
        )
        return OAuthStart(authorization_url=url, state=state)

    @activity.defn(name="complete_oauth")
    async def complete_oauth(self, inp: CompleteOAuth) -> ConnectionRef:
        pending = await self._store.get_oauth_pending(inp.state)
        if pending is None or pending.principal_id != inp.principal_id or pending.provider != inp.provider:
            raise permanent(ErrorCode.INVALID_REQUEST, "unknown OAuth state")
        verifier, redirect_uri = pending.verifier, pending.redirect_uri
        with adapter_errors("oauth token exchange"):
            account = await self._registry.get(inp.provider).exchange_code(
                client_id=OAUTH_CLIENT_ID, code=inp.code, code_verifier=verifier, redirect_uri=redirect_uri
            )
        # whoever opened the URL could consent with another account (login_hint is only a hint): link
        # only the account whose verified email is the one the identity assertion named
        expected = (inp.principal_email or "").strip().lower()
        linked = (account.primary_email or "").strip().lower()
        if not expected or not account.email_verified or not hmac.compare_digest(linked, expected):
            await self._discard(inp.provider, account)
            raise permanent(
                ErrorCode.ACCOUNT_IDENTITY_MISMATCH,
                f"the {inp.provider} account that consented is not the principal's; nothing was linked",
            )
        return await self._save(inp.provider, inp.principal_id, account)

    async def _discard(self, provider: str, account: ProviderAccount) -> None:
        """Revoke the tokens of an account that will not be linked (RFC 7009: the refresh token takes
        its grant's access tokens with it). Best effort: the refusal stands either way."""
        token, hint = (
            (account.refresh_token, "refresh_token")
            if account.refresh_token is not None
            else (account.credential, "access_token")
        )
        try:
            await self._registry.get(provider).revoke_token(token=token, token_type_hint=hint)
        except ProviderError as exc:
            activity.logger.warning("could not revoke the unlinked %s tokens: %s", provider, exc.code)
