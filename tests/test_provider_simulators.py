"""The same HttpProvider against the three LIVE simulators on loopback: identity, terms, OAuth + PKCE,
idempotency, credentials, restarts and injected faults. Outcomes are read back from the provider's own
state (`GET /_sim/state`), not from what the adapter returned."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from models.provider import ProviderAccount, TermsAcceptance
from models.secret import Secret
from providers.errors import PermanentProviderError, RetryableProviderError
from providers.http_provider import HttpProvider
from simulators.provider.catalogs import CATALOGS
from tests.fixtures.providers import DECLINED_TOKEN, ProviderSims, running_simulator, sim_client_secret
from tests.fixtures.servers import free_port

PAID = {"cloud": "cloud/r2", "db": "db/postgres:free", "mail": "mail/send:starter"}


def _email() -> str:
    return f"h{secrets.token_hex(5)}@example.com"


def _terms(provider: str, version: str | None = None) -> TermsAcceptance:
    return TermsAcceptance(
        terms_version=version or CATALOGS[provider].provider.terms_version,
        accepted_at=datetime.now(UTC),
        accepted_by="p_test",
        approval_id=f"ap_{secrets.token_hex(4)}",
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


def _adapter(sims: ProviderSims, name: str, http: httpx.AsyncClient, **kw: Any) -> HttpProvider:
    kw.setdefault("client_secret", sims.client_secret(name))
    return HttpProvider(name=name, base_url=sims.urls[name], http_client=http, **kw)


async def _state(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await http.get(f"{url}/_sim/state")
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


async def _new_account(sims: ProviderSims, p: HttpProvider, email: str | None = None) -> ProviderAccount:
    assertion = sims.signer.sign(
        subject=f"cus_{secrets.token_hex(4)}", email=email or _email(), audience=p.name
    )
    return await p.create_account(
        assertion=assertion, terms=_terms(p.name), idempotency_key=f"acct-{secrets.token_hex(6)}"
    )


@pytest.mark.parametrize("name", ["cloud", "db", "mail"])
async def test_account_resource_credential_lifecycle(
    provider_sims: ProviderSims, http: httpx.AsyncClient, name: str
) -> None:
    p = _adapter(provider_sims, name, http)
    catalog = await p.catalog()
    assert catalog.provider.name == name and catalog.services
    email = _email()
    sign = provider_sims.signer.sign
    assert (
        await p.lookup_account(assertion=sign(subject="cus_x", email=email, audience=name))
    ).exists is False
    account = await _new_account(provider_sims, p, email)
    assert account.link_action == "created"
    assert (await p.lookup_account(assertion=sign(subject="cus_x", email=email, audience=name))).exists

    service = catalog.service(PAID[name])
    assert service is not None
    key = f"res-{secrets.token_hex(6)}"
    token = Secret(f"spt_{secrets.token_hex(6)}") if service.pricing.type == "paid" else None
    resource = await p.create_resource(
        account=account.credential,
        service_id=service.service_id,
        name="r1",
        configuration={},
        payment_token=token,
        idempotency_key=key,
    )
    assert resource.status == "complete"
    state = await _state(http, provider_sims.urls[name])
    [row] = [r for r in state["resources"] if r["resource_id"] == resource.resource_id]
    assert row["account_id"] == account.account_id and row["status"] == "complete"
    charges = [c for c in state["charges"] if c["resource_id"] == resource.resource_id]
    if service.pricing.type == "paid":
        assert service.pricing.price is not None
        assert [(c["amount"], c["currency"]) for c in charges] == [(service.pricing.price.amount, "usd")]
        assert charges[0]["idempotency_key"] == f"{name}:{key}:charge"
    else:
        assert charges == []

    cred = await p.mint_credential(
        account=account.credential,
        resource_id=resource.resource_id,
        scopes=service.scopes[:1],
        ttl_seconds=600,
        idempotency_key=f"mint-{key}",
    )
    seen = await p.introspect(token=cred.token)
    assert (
        seen.active
        and seen.scope == service.scopes[0]
        and seen.sub == account.account_id
        and seen.aud == name
    )
    assert seen.exp == int(cred.expires_at.timestamp())
    # an API credential cannot manage the account
    with pytest.raises(PermanentProviderError) as info:
        await p.get_resource(account=cred.token, resource_id=resource.resource_id)
    assert info.value.code == "insufficient_scope"
    await p.revoke_credential(account=account.credential, credential_id=cred.credential_id)
    await p.revoke_credential(account=account.credential, credential_id=cred.credential_id)  # RFC 7009
    raw = await http.post(
        f"{provider_sims.urls[name]}/introspect",
        data={"token": cred.token.reveal()},
        auth=provider_sims.auth(name),
    )
    assert raw.status_code == 200 and raw.json() == {"active": False}
    unknown = await http.post(
        f"{provider_sims.urls[name]}/introspect", data={"token": "nope"}, auth=provider_sims.auth(name)
    )
    assert unknown.json() == {"active": False}
    state = await _state(http, provider_sims.urls[name])
    [tok] = [t for t in state["tokens"] if t["token_id"] == cred.credential_id]
    assert tok["revoked_at"] is not None and "token" not in tok and "token_hash" not in tok


async def test_bad_assertions_are_refused_and_change_nothing(
    provider_sims: ProviderSims, http: httpx.AsyncClient
) -> None:
    from providers.assertions import AssertionSigner

    p = _adapter(provider_sims, "cloud", http)
    email = _email()
    forger = AssertionSigner.ephemeral(issuer=provider_sims.issuer)
    old = datetime(2020, 1, 1, tzinfo=UTC)
    signer = provider_sims.signer
    cases = {
        "forged": (forger.sign(subject="cus_1", email=email, audience="cloud"), "assertion_invalid"),
        "expired": (
            signer.sign(subject="cus_1", email=email, audience="cloud", issued_at=old),
            "assertion_expired",
        ),
        "other audience": (
            signer.sign(subject="cus_1", email=email, audience="db"),
            "assertion_wrong_audience",
        ),
        "garbage": (Secret("a.b.c"), "assertion_invalid"),
    }
    for assertion, code in cases.values():
        with pytest.raises(PermanentProviderError) as info:
            await p.create_account(
                assertion=assertion, terms=_terms("cloud"), idempotency_key=secrets.token_hex(6)
            )
        assert (info.value.code, info.value.status) == (code, 401)
        with pytest.raises(PermanentProviderError):
            await p.lookup_account(assertion=assertion)
    # replay: the same assertion works once
    once = signer.sign(subject="cus_1", email=email, audience="cloud")
    await p.lookup_account(assertion=once)
    with pytest.raises(PermanentProviderError) as info:
        await p.create_account(assertion=once, terms=_terms("cloud"), idempotency_key=secrets.token_hex(6))
    assert info.value.code == "assertion_replayed"
    state = await _state(http, provider_sims.urls["cloud"])
    assert email not in {a["email"] for a in state["accounts"]}


async def test_terms_version_must_be_current(provider_sims: ProviderSims, http: httpx.AsyncClient) -> None:
    p = _adapter(provider_sims, "db", http)
    email = _email()
    assertion = provider_sims.signer.sign(subject="cus_t", email=email, audience="db")
    with pytest.raises(PermanentProviderError) as info:
        await p.create_account(
            assertion=assertion, terms=_terms("db", "2024-01-01"), idempotency_key="terms-old"
        )
    assert (info.value.code, info.value.status) == ("terms_acceptance_required", 403)
    assert email not in {a["email"] for a in (await _state(http, provider_sims.urls["db"]))["accounts"]}
    # accepted current terms under a new key: created; an existing account is refused afterwards
    account = await _new_account(provider_sims, p, email)
    assert account.link_action == "created"
    with pytest.raises(PermanentProviderError) as info:
        await _new_account(provider_sims, p, email)
    assert info.value.code == "account_exists"


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def _consent(http: httpx.AsyncClient, url: str, decision: str = "approve") -> dict[str, str]:
    """Play the human: open the consent page, press a button, return the redirect's query."""
    page = await http.get(url)
    assert page.status_code == 200 and "Approve" in page.text and "Deny" in page.text
    match = re.search(r'name="request_id" value="([^"]+)"', page.text)
    assert match
    base = url.split("/oauth/authorize")[0]
    answer = await http.post(f"{base}/oauth/authorize", data={"request_id": match[1], "decision": decision})
    assert answer.status_code == 303
    return {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["location"]).query).items()}


async def test_oauth_links_an_existing_account(provider_sims: ProviderSims, http: httpx.AsyncClient) -> None:
    p = _adapter(provider_sims, "mail", http)
    email = _email()
    seeded = (await http.post(f"{provider_sims.urls['mail']}/_sim/accounts", json={"email": email})).json()
    lookup = await p.lookup_account(
        assertion=provider_sims.signer.sign(subject="c", email=email, audience="mail")
    )
    assert lookup.exists
    verifier, challenge = _pkce()
    redirect = provider_sims.redirect_uri
    url = p.authorization_url(
        client_id="quartermaster",
        redirect_uri=redirect,
        state="s1",
        code_challenge=challenge,
        scopes=["account:manage"],
        login_hint=email,
    )
    query = await _consent(http, url)
    assert query["state"] == "s1" and "code" in query
    account = await p.exchange_code(
        client_id="quartermaster",
        code=Secret(query["code"]),
        code_verifier=Secret(verifier),
        redirect_uri=redirect,
    )
    assert (account.account_id, account.link_action) == (seeded["account_id"], "linked_existing")
    resource = await p.create_resource(
        account=account.credential,
        service_id="mail/send:starter",
        name="m",
        configuration={},
        payment_token=Secret("spt_oauth"),
        idempotency_key=secrets.token_hex(6),
    )
    assert resource.status == "complete"
    # refresh rotates: the new pair works, the old refresh token does not
    assert account.refresh_token is not None
    fresh = await p.refresh_account(client_id="quartermaster", refresh_token=account.refresh_token)
    assert (await p.introspect(token=fresh.credential)).active
    with pytest.raises(PermanentProviderError) as info:
        await p.refresh_account(client_id="quartermaster", refresh_token=account.refresh_token)
    assert info.value.code == "invalid_grant"
    # deny
    url = p.authorization_url(
        client_id="quartermaster",
        redirect_uri=redirect,
        state="s2",
        code_challenge=challenge,
        scopes=["account:manage"],
        login_hint=email,
    )
    denied = await _consent(http, url, "deny")
    assert (denied["error"], denied["state"], "code" in denied) == ("access_denied", "s2", False)


async def test_pkce_misuse_is_refused(provider_sims: ProviderSims, http: httpx.AsyncClient) -> None:
    p = _adapter(provider_sims, "cloud", http)
    email = _email()
    await http.post(f"{provider_sims.urls['cloud']}/_sim/accounts", json={"email": email})
    redirect = provider_sims.redirect_uri

    async def code_for(challenge: str) -> Secret:
        url = p.authorization_url(
            client_id="quartermaster",
            redirect_uri=redirect,
            state="st",
            code_challenge=challenge,
            scopes=[],
            login_hint=email,
        )
        return Secret((await _consent(http, url))["code"])

    async def refused(code: Secret, verifier: str, redirect_uri: str = redirect) -> str:
        with pytest.raises(PermanentProviderError) as info:
            await p.exchange_code(
                client_id="quartermaster",
                code=code,
                code_verifier=Secret(verifier),
                redirect_uri=redirect_uri,
            )
        return info.value.code

    verifier, challenge = _pkce()
    assert await refused(await code_for(challenge), _pkce()[0]) == "invalid_grant"  # wrong verifier
    assert await refused(await code_for(challenge), verifier, redirect + "/x") == "invalid_grant"
    code = await code_for(challenge)
    first = await p.exchange_code(
        client_id="quartermaster", code=code, code_verifier=Secret(verifier), redirect_uri=redirect
    )
    assert await refused(code, verifier) == "invalid_grant"  # reused code ...
    assert (await p.introspect(token=first.credential)).active is False  # ... revokes what it issued
    # the plain method and unregistered redirect URIs are refused at the authorization endpoint
    plain = p.authorization_url(
        client_id="quartermaster",
        redirect_uri=redirect,
        state="st",
        code_challenge=verifier,
        scopes=[],
        login_hint=email,
    ).replace("code_challenge_method=S256", "code_challenge_method=plain")
    answer = await http.get(plain)
    assert answer.status_code == 303 and "error=invalid_request" in answer.headers["location"]
    evil = p.authorization_url(
        client_id="quartermaster",
        redirect_uri="http://evil.test/cb",
        state="st",
        code_challenge=challenge,
        scopes=[],
        login_hint=email,
    )
    answer = await http.get(evil)
    assert answer.status_code == 400 and "location" not in answer.headers


async def test_idempotent_replay_and_conflict(provider_sims: ProviderSims, http: httpx.AsyncClient) -> None:
    p = _adapter(provider_sims, "cloud", http)
    account = await _new_account(provider_sims, p)
    key = f"idem-{secrets.token_hex(6)}"
    args: dict[str, Any] = {
        "account": account.credential,
        "service_id": "cloud/r2",
        "name": "bucket",
        "configuration": {"location": "weur"},
        "payment_token": Secret("spt_idem"),
    }
    first = await p.create_resource(**args, idempotency_key=key)
    again = await p.create_resource(**args, idempotency_key=key)
    assert again == first
    with pytest.raises(PermanentProviderError) as info:
        await p.create_resource(**{**args, "name": "other"}, idempotency_key=key)
    assert (info.value.code, info.value.status) == ("idempotency_conflict", 409)
    state = await _state(http, provider_sims.urls["cloud"])
    assert [r["resource_id"] for r in state["resources"] if r["account_id"] == account.account_id] == [
        first.resource_id
    ]
    assert len([c for c in state["charges"] if c["idempotency_key"] == f"cloud:{key}:charge"]) == 1
    # errors are replayed too, even once the cause is gone
    bad = {**args, "configuration": {"location": "mars"}}
    for _ in range(2):
        with pytest.raises(PermanentProviderError) as info:
            await p.create_resource(**bad, idempotency_key=f"{key}-bad")
        assert info.value.code == "invalid_configuration"


async def test_declined_payment_creates_nothing(provider_sims: ProviderSims, http: httpx.AsyncClient) -> None:
    p = _adapter(provider_sims, "mail", http)
    account = await _new_account(provider_sims, p)
    with pytest.raises(PermanentProviderError) as info:
        await p.create_resource(
            account=account.credential,
            service_id="mail/send:starter",
            name="m",
            configuration={},
            payment_token=Secret(DECLINED_TOKEN),
            idempotency_key=secrets.token_hex(6),
        )
    assert (info.value.code, info.value.status) == ("payment_declined", 402)
    with pytest.raises(PermanentProviderError) as info:
        await p.create_resource(
            account=account.credential,
            service_id="mail/send:starter",
            name="m",
            configuration={},
            payment_token=None,
            idempotency_key=secrets.token_hex(6),
        )
    assert info.value.code == "payment_required"
    state = await _state(http, provider_sims.urls["mail"])
    assert not [r for r in state["resources"] if r["account_id"] == account.account_id]


async def test_domain_needs_information_and_is_not_reversible(
    provider_sims: ProviderSims, http: httpx.AsyncClient
) -> None:
    p = _adapter(provider_sims, "cloud", http)
    account = await _new_account(provider_sims, p)
    resource = await p.create_resource(
        account=account.credential,
        service_id="cloud/registrar:domain",
        name="site",
        configuration={"domain": "example-qm.dev"},
        payment_token=Secret("spt_dom"),
        idempotency_key="dom-1",
    )
    assert resource.status == "needs_information" and resource.needs_information_schema is not None
    assert resource.charge is not None and resource.charge.amount.amount == 1099
    with pytest.raises(PermanentProviderError) as info:
        await p.mint_credential(
            account=account.credential,
            resource_id=resource.resource_id,
            scopes=[],
            ttl_seconds=60,
            idempotency_key="dom-mint-early",
        )
    assert info.value.code == "resource_not_ready"
    with pytest.raises(PermanentProviderError) as info:
        await p.submit_information(
            account=account.credential,
            resource_id=resource.resource_id,
            information={"registrant_contact": {"name": "Ada"}},
            idempotency_key="dom-info-bad",
        )
    assert info.value.code == "invalid_configuration"
    contact = {"name": "Ada L", "email": "ada@example.com", "country": "GB"}
    done = await p.submit_information(
        account=account.credential,
        resource_id=resource.resource_id,
        information={"registrant_contact": contact},
        idempotency_key="dom-info",
    )
    assert done.status == "complete" and done.configuration["registrant_contact"] == contact
    with pytest.raises(PermanentProviderError) as info:
        await p.remove_resource(
            account=account.credential, resource_id=resource.resource_id, idempotency_key="rm"
        )
    assert (info.value.code, info.value.status) == ("not_reversible", 409)
    with pytest.raises(PermanentProviderError) as info:
        await p.mint_credential(
            account=account.credential,
            resource_id=resource.resource_id,
            scopes=["dns:read", "db:admin"],
            ttl_seconds=600,
            idempotency_key="dom-mint-wide",
        )
    assert info.value.code == "invalid_scope"
    capped = await p.mint_credential(
        account=account.credential,
        resource_id=resource.resource_id,
        scopes=[],
        ttl_seconds=7 * 86_400,
        idempotency_key="dom-mint",
    )
    assert capped.scopes == ["dns:read", "dns:write"]
    lifetime = capped.expires_at - datetime.now(UTC)
    assert 86_300 < lifetime.total_seconds() <= 86_400
    state = await _state(http, provider_sims.urls["cloud"])
    [row] = [r for r in state["resources"] if r["resource_id"] == resource.resource_id]
    assert row["status"] == "complete"


async def test_paid_postgres_is_pending_then_complete(
    provider_sims: ProviderSims, http: httpx.AsyncClient
) -> None:
    p = _adapter(provider_sims, "db", http)
    account = await _new_account(provider_sims, p)
    created = await p.create_resource(
        account=account.credential,
        service_id="db/postgres:pro",
        name="main",
        configuration={"region": "eu-west"},
        payment_token=Secret("spt_pg"),
        idempotency_key="pg-1",
    )
    assert created.status == "pending" and created.charge is not None and created.charge.amount.amount == 2500
    statuses = [(await p.get_resource(account=account.credential, resource_id=created.resource_id)).status]
    while statuses[-1] == "pending" and len(statuses) < 5:
        statuses.append(
            (await p.get_resource(account=account.credential, resource_id=created.resource_id)).status
        )
    assert statuses[-1] == "complete" and len(statuses) <= 2
    removed = await p.remove_resource(
        account=account.credential, resource_id=created.resource_id, idempotency_key="x"
    )
    assert removed.status == "removed"


async def test_restarted_simulator_keeps_its_state(
    provider_sims: ProviderSims, http: httpx.AsyncClient
) -> None:
    with tempfile.TemporaryDirectory(prefix="qm-restart-") as tmp:
        config = provider_sims.config("db", data_dir=Path(tmp))
        port = free_port()
        with running_simulator(config, port=port) as url:
            p = HttpProvider(
                name="db",
                base_url=url,
                http_client=http,
                client_secret=Secret(sim_client_secret(Path(tmp), "db")),
            )
            account = await _new_account(provider_sims, p)
            resource = await p.create_resource(
                account=account.credential,
                service_id="db/postgres:free",
                name="keep",
                configuration={},
                payment_token=None,
                idempotency_key="keep-1",
            )
            cred = await p.mint_credential(
                account=account.credential,
                resource_id=resource.resource_id,
                scopes=["db:connect"],
                ttl_seconds=600,
                idempotency_key="keep-mint",
            )
            revoked = await p.mint_credential(
                account=account.credential,
                resource_id=resource.resource_id,
                scopes=["db:connect"],
                ttl_seconds=600,
                idempotency_key="keep-mint-2",
            )
            await p.revoke_credential(account=account.credential, credential_id=revoked.credential_id)
            before = await _state(http, url)
        with running_simulator(config, port=port) as url:  # a new app on the same SQLite file
            after = await _state(http, url)
            assert {k: after[k] for k in ("accounts", "resources", "tokens")} == {
                k: before[k] for k in ("accounts", "resources", "tokens")
            }
            got = await p.get_resource(account=account.credential, resource_id=resource.resource_id)
            assert got == resource
            assert (await p.introspect(token=cred.token)).active
            assert (await p.introspect(token=revoked.token)).active is False
            replay = await p.mint_credential(
                account=account.credential,
                resource_id=resource.resource_id,
                scopes=["db:connect"],
                ttl_seconds=600,
                idempotency_key="keep-mint",
            )
            assert replay == cred  # the sealed first response, token included


async def _fault(http: httpx.AsyncClient, url: str, **spec: Any) -> None:
    (await http.post(f"{url}/_sim/faults", json=spec)).raise_for_status()


async def test_injected_faults_map_to_error_classes(
    provider_sims: ProviderSims, http: httpx.AsyncClient
) -> None:
    url = provider_sims.urls["mail"]
    p = _adapter(provider_sims, "mail", http, timeout=0.3)
    account = await _new_account(provider_sims, p)
    try:
        await _fault(http, url, route="/catalog", kind="error_500")
        with pytest.raises(RetryableProviderError) as info:
            await p.catalog()
        assert (info.value.code, info.value.status) == ("simulated_fault", 500)
        await _fault(http, url, route="catalog", kind="error_429", seconds=3)
        with pytest.raises(RetryableProviderError) as info:
            await p.catalog()
        assert (info.value.code, info.value.status, info.value.retry_after) == ("rate_limited", 429, 3.0)
        await _fault(http, url, route="catalog", kind="timeout", seconds=1)
        with pytest.raises(RetryableProviderError) as info:
            await p.catalog()
        assert info.value.code == "timeout"
        await _fault(http, url, route="catalog", kind="latency", seconds=0.05)
        assert (await p.catalog()).provider.name == "mail"
        # crash after commit: the resource exists, the caller saw a dropped connection; the retry
        # with the same key returns the same resource and charges nothing more
        key = f"crash-{secrets.token_hex(6)}"
        args: dict[str, Any] = {
            "account": account.credential,
            "service_id": "mail/send:starter",
            "name": "c",
            "configuration": {},
            "payment_token": Secret("spt_crash"),
            "idempotency_key": key,
        }
        await _fault(http, url, route="create_resource", kind="crash_after_commit")
        with pytest.raises(RetryableProviderError) as info:
            await p.create_resource(**args)
        assert info.value.code == "connection_error"
        state = await _state(http, url)
        [row] = [r for r in state["resources"] if r["account_id"] == account.account_id]
        retried = await p.create_resource(**args)
        assert retried.resource_id == row["resource_id"]
        state = await _state(http, url)
        assert len([r for r in state["resources"] if r["account_id"] == account.account_id]) == 1
        assert len([c for c in state["charges"] if c["idempotency_key"] == f"mail:{key}:charge"]) == 1
    finally:
        await http.delete(f"{url}/_sim/faults")


async def test_paid_resource_charges_through_the_local_stripe(
    provider_sims: ProviderSims,
    http: httpx.AsyncClient,
    stripe_sim: str,
    stripe_adapter: Any,
    stripe_admin: Any,
) -> None:
    """The mail simulator wired like `python -m simulators.provider`: StripeAdapter on the local Stripe."""
    from providers.stripe_adapter import StripeAdapter
    from quartermaster.config import LOCAL_STRIPE_KEY
    from tests.fixtures.stripe import customer_with_card, issue

    charger = StripeAdapter(api_key=LOCAL_STRIPE_KEY, base_url=stripe_sim)
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    enough = await issue(stripe_adapter, customer_id, pm_id, max_amount=1500)
    too_small = await issue(stripe_adapter, customer_id, pm_id, max_amount=1000)
    with tempfile.TemporaryDirectory(prefix="qm-stripe-") as tmp:
        config = provider_sims.config("mail", data_dir=Path(tmp), charger=charger)
        with running_simulator(config) as url:
            p = HttpProvider(name="mail", base_url=url, http_client=http)
            account = await _new_account(provider_sims, p)
            args: dict[str, Any] = {
                "account": account.credential, "service_id": "mail/send:starter", "name": "m",
                "configuration": {}, "idempotency_key": f"stripe-{secrets.token_hex(6)}",
            }  # fmt: skip
            with pytest.raises(PermanentProviderError) as info:
                await p.create_resource(**{**args, "idempotency_key": "small"}, payment_token=too_small)
            assert info.value.code == "payment_declined"
            first = await p.create_resource(**args, payment_token=enough)
            again = await p.create_resource(**args, payment_token=enough)
            assert first == again and first.charge is not None
            charges = await stripe_adapter.list_charges(
                idempotency_key=f"mail:{args['idempotency_key']}:charge"
            )
            assert [(c.payment_intent_id, c.amount.amount, c.status) for c in charges] == [
                (first.charge.payment_reference, 1500, "succeeded")
            ]
            state = await _state(http, url)
            assert [r["resource_id"] for r in state["resources"]] == [first.resource_id]
    # the charger's connections belonged to the simulator's (now closed) event loop: nothing to close here
