"""Runtime attestation and identity tokens: measurements, claims, and every way a token is refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, OKPKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from models.errors import ErrorCode, QuartermasterError
from quartermaster.identity.attestation import Attestor, measure
from quartermaster.identity.keys import SigningKeys
from quartermaster.identity.launcher import run_attested
from quartermaster.identity.settings import IdentitySettings, TrustedAttestor
from quartermaster.identity.verification import IdentityVerifier, ReplayGuard
from tests.fixtures.servers import serve_asgi

TD = "quartermaster.local"
ISSUER = f"spiffe://{TD}/attestor"
CI_ISSUER = "https://ci.example.test"
CI_SUBJECT = "repo:acme/app:ref:refs/heads/main"


@pytest.fixture
def replay(tmp_path: Path) -> ReplayGuard:
    return ReplayGuard(tmp_path / "replay.sqlite")


@pytest.fixture
def attestor() -> Attestor:
    return Attestor(keys=SigningKeys.ephemeral("att"), issuer=ISSUER, trust_domain=TD, ttl_seconds=600)


def verifier_for(
    attestor: Attestor, replay: ReplayGuard, trusted: tuple[TrustedAttestor, ...] = ()
) -> IdentityVerifier:
    return IdentityVerifier(
        trust_domain=TD, local_issuer=ISSUER, local_keys=attestor.keys, trusted=trusted, replay=replay
    )


async def expect_refused(coro: object) -> str:
    with pytest.raises(QuartermasterError) as err:
        await coro  # type: ignore[misc]
    assert err.value.code == ErrorCode.IDENTITY_INVALID
    return err.value.message


# ---- measurements -------------------------------------------------------------------------------
def test_measures_interpreter_script(tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text("print('hello')\n")
    m = measure([sys.executable, "-u", str(script), "--flag"], cwd=tmp_path)
    assert m.sha256 == hashlib.sha256(script.read_bytes()).hexdigest()
    assert m.sha256_of == "script"
    assert m.script == str(script.resolve())
    assert m.executable == str(Path(sys.executable).resolve())
    assert m.argv == [sys.executable, "-u", str(script), "--flag"]
    assert m.uid == os.getuid() and m.host == socket.gethostname()
    assert abs((datetime.now(UTC) - m.measured_at).total_seconds()) < 5


def test_measures_shebang_script_and_binary(tmp_path: Path) -> None:
    script = tmp_path / "run-agent"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    m = measure([str(script)], cwd=tmp_path)
    assert (m.sha256_of, m.sha256) == ("script", hashlib.sha256(script.read_bytes()).hexdigest())
    true_bin = Path(
        subprocess.run(["which", "true"], capture_output=True, text=True, check=True).stdout.strip()
    )
    b = measure(["true"])
    assert b.sha256_of == "binary" and b.script is None
    assert b.sha256 == hashlib.sha256(true_bin.resolve().read_bytes()).hexdigest()
    inline = measure([sys.executable, "-c", "print(1)"])
    assert (inline.sha256_of, inline.sha256) == ("inline", hashlib.sha256(b"print(1)").hexdigest())


# ---- our own tokens -----------------------------------------------------------------------------
async def test_identity_token_claims_and_verification(
    tmp_path: Path, attestor: Attestor, replay: ReplayGuard
) -> None:
    script = tmp_path / "agent.py"
    script.write_text("x = 1\n")
    m = measure([sys.executable, str(script)], cwd=tmp_path)
    issued = attestor.issue("builder", m)
    token = issued.token.reveal()
    decoded = jwt.decode(token, attestor.keys.key_set(), algorithms=["EdDSA"])
    assert decoded.header["typ"] == "qm-agent+jwt" and decoded.header["alg"] == "EdDSA"
    c = decoded.claims
    assert c["iss"] == ISSUER and c["aud"] == "quartermaster"
    assert c["sub"] == f"spiffe://{TD}/agent/builder"
    assert 0 < c["exp"] - c["iat"] <= 900 and c["jti"]
    assert c["qm_measurement"]["sha256"] == hashlib.sha256(script.read_bytes()).hexdigest()
    v = await verifier_for(attestor, replay).verify(token)
    assert (v.agent, v.spiffe_id) == ("builder", f"spiffe://{TD}/agent/builder")
    # reusable for its short life while the process runs
    assert (await verifier_for(attestor, replay).verify(token)).jti == issued.jti


async def test_identity_tokens_under_either_eddsa_name_verify_and_no_other_alg(
    attestor: Attestor, replay: ReplayGuard
) -> None:
    """Tokens signed before 0.3 say `alg: Ed25519` (RFC 9864) under keys pinned to that name; they
    still verify, beside today's `EdDSA`. `none` and HS256 (the JWK's public `x` as a secret) do not."""
    issued = attestor.issue("builder", measure(["true"])).token.reveal()
    head, body, _ = issued.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    private = json.loads(attestor.keys.to_json())["keys"][-1]["jwk"]
    legacy = OKPKey.import_key({**private, "alg": "Ed25519"})
    old = jwt.encode({**header, "alg": "Ed25519"}, claims, legacy, algorithms=["Ed25519"])
    assert (await verifier_for(attestor, replay).verify(old)).agent == "builder"
    # a verifier built from a 0.2 key file (`alg: Ed25519` in the JWKs) takes both names too
    old_file = json.loads(attestor.keys.to_json())
    for item in old_file["keys"]:
        item["jwk"]["alg"] = "Ed25519"
    old_keys = SigningKeys.from_json(json.dumps(old_file))
    old_verifier = IdentityVerifier(trust_domain=TD, local_issuer=ISSUER, local_keys=old_keys, replay=replay)
    assert (await old_verifier.verify(issued)).agent == "builder"
    assert (await old_verifier.verify(old)).agent == "builder"
    none_head = base64.urlsafe_b64encode(json.dumps({**header, "alg": "none"}).encode()).rstrip(b"=").decode()
    unsigned = f"{none_head}.{body}."
    assert "signature" in await expect_refused(verifier_for(attestor, replay).verify(unsigned))
    hmac_key = OctKey.import_key(private["x"])
    hs = jwt.encode({**header, "alg": "HS256"}, claims, hmac_key, algorithms=["HS256"])
    assert "signature" in await expect_refused(verifier_for(attestor, replay).verify(hs))


async def test_refusals(tmp_path: Path, attestor: Attestor, replay: ReplayGuard) -> None:
    m = measure(["true"])
    v = verifier_for(attestor, replay)
    stranger = Attestor(
        keys=SigningKeys.ephemeral(), issuer="spiffe://evil.example/attestor", trust_domain=TD
    )
    assert "unknown issuer" in await expect_refused(v.verify(stranger.issue("builder", m).token.reveal()))
    forger = Attestor(keys=SigningKeys.ephemeral(), issuer=ISSUER, trust_domain=TD)
    assert "signature" in await expect_refused(v.verify(forger.issue("builder", m).token.reveal()))
    good = attestor.issue("builder", m).token.reveal()
    head, body, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = f"spiffe://{TD}/agent/admin"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert "signature" in await expect_refused(v.verify(f"{head}.{forged_body}.{sig}"))
    old = attestor.issue("builder", m, now=datetime.now(UTC) - timedelta(minutes=20))
    assert "expired" in await expect_refused(v.verify(old.token.reveal()))
    live = attestor.issue("builder", m)
    await v.verify(live.token.reveal())
    replay.retire(ISSUER, live.jti, int(live.expires_at.timestamp()))
    assert "replayed" in await expect_refused(v.verify(live.token.reveal()))
    assert "not a compact" in await expect_refused(v.verify("not-a-token"))


# ---- external attestors -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ci_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ci-1"})


@pytest.fixture(scope="module")
def ci_jwks_url(ci_key: ECKey) -> Iterator[str]:
    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse({"keys": [ci_key.as_dict(private=False)]})

    with serve_asgi(Starlette(routes=[Route("/.well-known/jwks", jwks)])) as url:
        yield f"{url}/.well-known/jwks"


def ci_token(
    key: ECKey, *, sub: str = CI_SUBJECT, aud: str = "quartermaster", age: int = 0, alg: str = "ES256"
) -> str:
    now = int(time.time()) - age
    claims = {"iss": CI_ISSUER, "sub": sub, "aud": aud, "iat": now, "nbf": now, "exp": now + 300}
    claims["jti"] = os.urandom(8).hex()
    return jwt.encode({"alg": alg, "kid": "ci-1"}, claims, key, algorithms=[alg])


async def test_external_attestor_via_jwks(
    ci_key: ECKey, ci_jwks_url: str, attestor: Attestor, replay: ReplayGuard
) -> None:
    trusted = TrustedAttestor(
        issuer=CI_ISSUER, jwks_url=ci_jwks_url, agents={"repo:acme/app:*": "ci-deployer"}
    )
    v = verifier_for(attestor, replay, (trusted,))
    token = ci_token(ci_key)
    got = await v.verify(token, use_id="wf-1:1")
    assert (got.agent, got.spiffe_id, got.external_subject) == (
        "ci-deployer",
        f"spiffe://{TD}/agent/ci-deployer",
        CI_SUBJECT,
    )
    assert (await v.verify(token, use_id="wf-1:1")).agent == "ci-deployer"  # a retried activity
    assert "replayed" in await expect_refused(v.verify(token, use_id="wf-2:1"))
    assert "maps to no agent" in await expect_refused(v.verify(ci_token(ci_key, sub="repo:other/x")))
    assert "audience" in await expect_refused(v.verify(ci_token(ci_key, aud="someone-else")))
    assert "expired" in await expect_refused(v.verify(ci_token(ci_key, age=3600)))
    other = ECKey.generate_key("P-256", parameters={"kid": "ci-1"})
    assert "signature" in await expect_refused(v.verify(ci_token(other)))


def test_trusted_attestors_from_env(tmp_path: Path) -> None:
    doc = [
        {"issuer": CI_ISSUER, "jwks_file": str(tmp_path / "jwks.json"), "agents": {CI_SUBJECT: "ci-deployer"}}
    ]
    ids = IdentitySettings.from_env(tmp_path, {"QM_TRUSTED_ATTESTORS": json.dumps(doc)})
    assert ids.trusted_attestors[0].agent_for(CI_SUBJECT) == "ci-deployer"
    with pytest.raises(ValueError):
        IdentitySettings.from_env(
            tmp_path, {"QM_TRUSTED_ATTESTORS": json.dumps([{**doc[0], "algorithms": ["HS256"]}])}
        )


# ---- qm run ---------------------------------------------------------------------------------------
async def test_run_injects_identity_only_into_the_child(
    tmp_path: Path, attestor: Attestor, replay: ReplayGuard
) -> None:
    out, go = tmp_path / "seen.json", tmp_path / "go"
    script = tmp_path / "agent.py"
    script.write_text(
        "import json, os, sys, time, pathlib\n"
        f"pathlib.Path({str(out)!r}).write_text(json.dumps({{k: os.environ.get(k) for k in "
        "('QM_IDENTITY_TOKEN', 'QM_AGENT', 'QM_SESSION_TOKEN', 'QM_IDENTITY_TOKEN_FILE')}))\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)\n"
        "sys.exit(7)\n"
    )
    os.environ["QM_SESSION_TOKEN"] = "inherited-must-not-leak"
    try:
        task = asyncio.create_task(
            asyncio.to_thread(
                run_attested, [sys.executable, str(script)], agent="builder", attestor=attestor, replay=replay
            )
        )
        deadline = time.monotonic() + 20
        while not out.exists() and time.monotonic() < deadline:  # noqa: ASYNC110 - a file the child writes
            await asyncio.sleep(0.05)
        seen = json.loads(out.read_text())
        assert "QM_IDENTITY_TOKEN" not in os.environ
        assert seen["QM_AGENT"] == "builder" and seen["QM_SESSION_TOKEN"] is None
        v = await verifier_for(attestor, replay).verify(seen["QM_IDENTITY_TOKEN"])
        assert v.measurement is not None
        assert v.measurement["sha256"] == hashlib.sha256(script.read_bytes()).hexdigest()
        go.write_text("")
        record = await task
    finally:
        del os.environ["QM_SESSION_TOKEN"]
    assert record.exit_code == 7
    assert "replayed" in await expect_refused(
        verifier_for(attestor, replay).verify(seen["QM_IDENTITY_TOKEN"])
    )
