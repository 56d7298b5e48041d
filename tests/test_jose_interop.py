"""Quartermaster's tokens verify with JOSE libraries nobody here wrote (PyJWT, jwcrypto), given nothing
but the key sets the running API publishes over HTTP; forged variants are refused by both.

The tokens are the real ones: an identity assertion from the keys the worker signs with, and the agent
identity and session tokens the API hands an agent (`POST /v1/identities/attest`, what `qm run` does).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import httpx
import jwcrypto.jwk
import jwcrypto.jws
import jwcrypto.jwt
import jwt as pyjwt
import pytest
from joserfc import jwt as joserfc_jwt
from joserfc.jwk import OctKey, OKPKey
from jwcrypto.common import JWException

from models.secret import Secret
from providers.errors import PermanentProviderError
from providers.http_provider import HttpProvider
from quartermaster.api.routes.callbacks import JWKS_PATHS
from quartermaster.identity.settings import AUDIENCE
from quartermaster.identity.tokens import SessionTokens
from tests.fixtures.providers import ProviderSims
from tests.fixtures.stack import Stack, new_email

#: what an OKP public JWK may hold (RFC 7517 section 4, RFC 8037 section 2): never `d`
PUBLIC_MEMBERS = {"kty", "crv", "x", "kid", "use", "alg"}


@dataclass(frozen=True)
class Issued:
    """One real token of each kind, with what its verifier expects."""

    kind: str  # the JWKS it verifies with (a key of JWKS_PATHS)
    token: str
    typ: str
    issuer: str
    audience: str
    subject: str


@pytest.fixture(scope="module")
async def issued(stack: Stack) -> list[Issued]:
    email = new_email()
    human = await stack.login(email)
    session_id = await stack.open_session(human, email, "planner", allowed_services=["cloud/*"])
    agent = await stack.agent(human, "planner", session_id)
    identity_token = agent._identity
    session_token = agent._session
    assert isinstance(identity_token, str) and isinstance(session_token, str)
    signer = stack.keyring.assertion_signer(stack.settings.public_url)  # the worker's signer
    assertion = signer.sign(subject="cus_interop", email="interop@example.com", audience="cloud").reveal()
    ids = stack.api.identity
    return [
        Issued("assertion", assertion, "qm-assertion+jwt", stack.settings.public_url, "cloud", "cus_interop"),
        Issued(
            "agent-identity",
            identity_token,
            "qm-agent+jwt",
            ids.issuer,
            AUDIENCE,
            f"spiffe://{ids.trust_domain}/agent/planner",
        ),
        Issued(
            "session",
            session_token,
            "qm-session+jwt",
            ids.session_issuer,
            AUDIENCE,
            stack.principal_id(email),
        ),
    ]


async def _published(stack: Stack) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        out = {}
        for kind, path in JWKS_PATHS.items():
            r = await http.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
            out[kind] = r.json()
        return out


def _header(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    doc: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return doc


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def _pyjwt(stack: Stack, item: Issued, token: str | None = None) -> dict[str, Any]:
    """PyJWT's own JWKS client fetches the key set over HTTP and picks the key by `kid`."""
    token = token or item.token
    client = pyjwt.PyJWKClient(stack.api_url + JWKS_PATHS[item.kind], cache_keys=False)
    key = client.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = pyjwt.decode(
        token,
        key,
        algorithms=["EdDSA"],
        audience=item.audience,
        issuer=item.issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )
    return claims


def _jwcrypto(jwks_text: str, item: Issued, token: str | None = None) -> dict[str, Any]:
    keys = jwcrypto.jwk.JWKSet.from_json(jwks_text)
    checked = jwcrypto.jwt.JWT(
        jwt=token or item.token,
        key=keys,
        algs=["EdDSA"],
        expected_type="JWS",
        check_claims={"iss": item.issuer, "aud": item.audience, "exp": None, "sub": item.subject},
    )
    claims: dict[str, Any] = json.loads(checked.claims)
    return claims


def _jwks_problems(kind: str, raw: bytes) -> list[str]:
    """What is wrong with a served JWKS: a private member (`d`) or anything but a public EdDSA key."""
    problems = [f"{kind}: a private member in the bytes"] if b'"d"' in raw else []
    doc = json.loads(raw)
    if set(doc) != {"keys"} or not doc["keys"]:
        return [*problems, f"{kind}: not a non-empty JWKS"]
    for key in doc["keys"]:
        if not set(key) <= PUBLIC_MEMBERS or "d" in key:
            problems.append(f"{kind}: members {sorted(set(key) - PUBLIC_MEMBERS)} are not public")
        if (key.get("kty"), key.get("crv"), key.get("use"), key.get("alg")) != (
            "OKP",
            "Ed25519",
            "sig",
            "EdDSA",
        ):
            problems.append(f"{kind}: {key.get('kid')} is not a public EdDSA signing key")
    return problems


async def test_every_verification_key_is_published_public_only_and_distinct(stack: Stack) -> None:
    kids: list[str] = []
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        for kind, path in JWKS_PATHS.items():
            raw = (await http.get(path)).content
            assert _jwks_problems(kind, raw) == []
            for key in json.loads(raw)["keys"]:
                assert len(base64.urlsafe_b64decode(key["x"] + "=")) == 32
                kids.append(key["kid"])
    assert len(kids) == len(set(kids)), kids  # no kid names two keys, across all three sets
    # the broken variant: the key file's own (private) documents, served as they are, are caught
    for section in ("attestor", "session"):
        private = {"keys": [item["jwk"] for item in json.loads(getattr(stack.keyring, section))["keys"]]}
        assert any("private" in p for p in _jwks_problems(section, json.dumps(private).encode()))
    leaked = json.loads(stack.keyring.assertion_signer("x").to_json())
    assert _jwks_problems("assertion", json.dumps({"keys": [k["jwk"] for k in leaked["keys"]]}).encode())


async def test_tokens_verify_with_pyjwt_and_jwcrypto_from_the_published_jwks(
    stack: Stack, issued: list[Issued]
) -> None:
    published = await _published(stack)
    for item in issued:
        header = _header(item.token)
        assert header["alg"] == "EdDSA" and header["typ"] == item.typ, header
        by_pyjwt = _pyjwt(stack, item)
        by_jwcrypto = _jwcrypto(json.dumps(published[item.kind]), item)
        assert by_pyjwt == by_jwcrypto
        assert by_pyjwt["sub"] == item.subject and by_pyjwt["iss"] == item.issuer
    session = next(i for i in issued if i.kind == "session")
    assert (
        _pyjwt(stack, session)["act"]["sub"] == next(i for i in issued if i.kind == "agent-identity").subject
    )


async def test_each_token_verifies_only_with_its_own_key_set(stack: Stack, issued: list[Issued]) -> None:
    """A verifier of one kind of token trusts no key of another kind."""
    published = await _published(stack)
    for item in issued:
        for kind, doc in published.items():
            if kind == item.kind:
                continue
            with pytest.raises(jwcrypto.jwt.JWTMissingKey):
                _jwcrypto(json.dumps(doc), item)
            with pytest.raises(pyjwt.PyJWKClientError):
                _pyjwt(stack, Issued(kind, item.token, item.typ, item.issuer, item.audience, item.subject))


def _forgeries(item: Issued) -> dict[str, str]:
    """Tokens an attacker can make without Quartermaster's private keys."""
    header = _header(item.token)
    _, payload, signature = item.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    stranger = OKPKey.generate_key("Ed25519")
    forged_same_kid = joserfc_jwt.encode(header, claims, stranger, algorithms=["EdDSA"])
    stranger_kid = joserfc_jwt.encode(
        {**header, "kid": "att-stranger"}, claims, stranger, algorithms=["EdDSA"]
    )
    unsigned = f"{_b64({'alg': 'none', 'typ': item.typ, 'kid': header['kid']})}.{payload}."
    tampered = f"{_b64(header)}.{_b64({**claims, 'sub': 'someone-else'})}.{signature}"
    return {
        "signed by a key not in the JWKS, under a published kid": forged_same_kid,
        "signed by a key not in the JWKS": stranger_kid,
        "alg none": unsigned,
        "tampered claims": tampered,
    }


async def test_forged_tokens_are_refused_by_both_libraries(stack: Stack, issued: list[Issued]) -> None:
    published = await _published(stack)
    for item in issued:
        for name, forged in _forgeries(item).items():
            with pytest.raises((pyjwt.PyJWTError, pyjwt.PyJWKClientError)):
                _pyjwt(stack, item, forged)
                pytest.fail(f"PyJWT accepted a {item.kind} token {name}")
            with pytest.raises((JWException, ValueError)):
                _jwcrypto(json.dumps(published[item.kind]), item, forged)
                pytest.fail(f"jwcrypto accepted a {item.kind} token {name}")


def _stranger_under(key: dict[str, Any]) -> dict[str, Any]:
    """A fresh public key with the `kid`, `use` and `alg` of `key`."""
    fresh: dict[str, Any] = json.loads(jwcrypto.jwk.JWK.generate(kty="OKP", crv="Ed25519").export_public())
    return {**fresh, "kid": key["kid"], "use": key["use"], "alg": key["alg"]}


async def test_a_jwks_with_a_foreign_key_is_not_trusted_for_our_tokens(
    stack: Stack, issued: list[Issued]
) -> None:
    """The broken variant of the key set: the real keys replaced by a stranger's under the same kids.
    Both libraries then refuse every real token, so the checks above do depend on the published keys."""
    published = await _published(stack)
    for item in issued:
        swapped = {"keys": [_stranger_under(key) for key in published[item.kind]["keys"]]}
        with pytest.raises(JWException):  # jwcrypto: no key of the set verifies it (JWTMissingKey)
            _jwcrypto(json.dumps(swapped), item)
        jwk = pyjwt.PyJWKSet.from_dict(swapped)[_header(item.token)["kid"]]
        with pytest.raises(pyjwt.InvalidSignatureError):
            pyjwt.decode(item.token, jwk, algorithms=["EdDSA"], audience=item.audience)


async def test_tokens_signed_under_the_rfc9864_name_still_verify(stack: Stack, issued: list[Issued]) -> None:
    """Session tokens from before 0.3 said `alg: Ed25519`; Quartermaster's own verifier still takes them."""
    session = next(i for i in issued if i.kind == "session")
    keys = stack.keyring.signing_keys("session")
    newest = keys._keys[-1]
    legacy = OKPKey.import_key({**dict(newest.as_dict(private=True)), "alg": "Ed25519"})
    _, payload, _ = session.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    header = {**_header(session.token), "alg": "Ed25519"}
    old = joserfc_jwt.encode(header, claims, legacy, algorithms=["Ed25519"])
    verified = SessionTokens(keys=keys, issuer=stack.api.identity.session_issuer).verify(old)
    assert verified.session_id == claims["sid"] and verified.principal_id == session.subject
    # (PyJWT knows no `Ed25519` algorithm name: exactly why new tokens say `EdDSA`)
    with pytest.raises(pyjwt.PyJWTError):
        _pyjwt(stack, session, old)


async def test_a_live_provider_simulator_takes_both_eddsa_names_and_nothing_else(
    provider_sims: ProviderSims,
) -> None:
    """The simulators verify what real orchestrators send: standard `EdDSA` (what PyJWT or jose would
    sign), RFC 9864's `Ed25519` (Quartermaster 0.2), and refuse `none` and HS256 over the public key."""
    signer = provider_sims.signer
    real = signer.sign(subject="cus_names", email="names@example.com", audience="cloud").reveal()
    header, claims = _header(real), json.loads(base64.urlsafe_b64decode(real.split(".")[1] + "=="))
    private = dict(signer._keys[-1].key.as_dict(private=True))
    by_pyjwt = pyjwt.encode(
        {**claims, "jti": "pyjwt-1"},
        pyjwt.PyJWK({**private, "alg": "EdDSA"}).key,
        algorithm="EdDSA",
        headers={"kid": header["kid"], "typ": header["typ"]},
    )
    legacy_key = OKPKey.import_key({**private, "alg": "Ed25519"})
    legacy = joserfc_jwt.encode(
        {**header, "alg": "Ed25519"}, {**claims, "jti": "legacy-1"}, legacy_key, algorithms=["Ed25519"]
    )
    hs_key = OctKey.import_key(private["x"])
    hs256 = joserfc_jwt.encode(
        {**header, "alg": "HS256"}, {**claims, "jti": "hs-1"}, hs_key, algorithms=["HS256"]
    )
    unsigned = f"{_b64({**header, 'alg': 'none'})}.{_b64({**claims, 'jti': 'none-1'})}."
    async with httpx.AsyncClient(timeout=5.0) as http:
        p = HttpProvider(name="cloud", base_url=provider_sims.urls["cloud"], http_client=http)
        for token in (real, by_pyjwt, legacy):
            assert _header(token)["alg"] in ("EdDSA", "Ed25519")
            assert (await p.lookup_account(assertion=Secret(token))).exists is False
        for token in (hs256, unsigned):
            with pytest.raises(PermanentProviderError) as info:
                await p.lookup_account(assertion=Secret(token))
            assert (info.value.code, info.value.status) == ("assertion_invalid", 401)
