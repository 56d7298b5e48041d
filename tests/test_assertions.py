"""Identity assertions: what a provider accepts and refuses (RFC 8725 hygiene), key files, rotation."""

from __future__ import annotations

import base64
import json
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import OKPKey

from providers.assertions import (
    ASSERTION_TYP,
    RETIRED_KEY_GRACE_SECONDS,
    AssertionSigner,
    InvalidAssertionError,
    verify_assertion,
)

ISSUER = "http://127.0.0.1:8700"


def _segments(token: str) -> tuple[dict[str, object], dict[str, object]]:
    def dec(part: str) -> dict[str, object]:
        doc: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        return doc

    header, payload, _ = token.split(".")
    return dec(header), dec(payload)


def _b64(doc: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


@pytest.fixture
def signer() -> AssertionSigner:
    return AssertionSigner.ephemeral(issuer=ISSUER)


def _refused(token: str, signer: AssertionSigner, audience: str = "cloud", issuer: str = ISSUER) -> str:
    with pytest.raises(InvalidAssertionError) as info:
        verify_assertion(token, jwks=signer.jwks(), issuer=issuer, audience=audience)
    assert "@" not in str(info.value)  # never echoes the email
    return info.value.code


def test_signed_assertion_has_the_documented_header_and_claims(signer: AssertionSigner) -> None:
    token = signer.sign(subject="cus_123", email="ada@example.com", audience="cloud").reveal()
    header, claims = _segments(token)
    assert header == {"alg": "EdDSA", "kid": signer.current_kid, "typ": ASSERTION_TYP}
    assert claims["iss"] == ISSUER and claims["aud"] == "cloud" and claims["sub"] == "cus_123"
    assert claims["email"] == "ada@example.com" and claims["email_verified"] is True
    assert claims["exp"] - claims["iat"] == 300  # type: ignore[operator]
    verified = verify_assertion(token, jwks=signer.jwks(), issuer=ISSUER, audience="cloud")
    assert (verified.sub, verified.email, verified.aud) == ("cus_123", "ada@example.com", "cloud")
    other = signer.sign(subject="cus_123", email="ada@example.com", audience="cloud").reveal()
    assert _segments(other)[1]["jti"] != claims["jti"]


def test_jwks_is_public_only(signer: AssertionSigner) -> None:
    keys = signer.jwks()["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "OKP" and keys[0]["crv"] == "Ed25519"
    assert keys[0]["alg"] == "EdDSA" and keys[0]["use"] == "sig"
    assert "d" not in keys[0]


def _legacy_key(signer: AssertionSigner) -> OKPKey:
    """The signer's current key as Quartermaster 0.2 wrote it: `alg: "Ed25519"` (RFC 9864's name)."""
    doc = dict(signer._keys[-1].key.as_dict(private=True))
    return OKPKey.import_key({**doc, "alg": "Ed25519"})


def test_assertions_signed_under_the_rfc9864_name_still_verify(signer: AssertionSigner) -> None:
    claims = _segments(signer.sign(subject="cus_1", email="a@example.com", audience="cloud").reveal())[1]
    header = {"alg": "Ed25519", "kid": signer.current_kid, "typ": ASSERTION_TYP}
    old = jwt.encode(header, claims, _legacy_key(signer), algorithms=["Ed25519"])
    assert _segments(old)[0]["alg"] == "Ed25519"
    verified = verify_assertion(old, jwks=signer.jwks(), issuer=ISSUER, audience="cloud")
    assert verified.sub == "cus_1"
    # and a JWKS published by 0.2 (keys pinned to `alg: Ed25519`) verifies new `EdDSA` assertions
    legacy_jwks = {"keys": [{**k, "alg": "Ed25519"} for k in signer.jwks()["keys"]]}
    new = signer.sign(subject="cus_1", email="a@example.com", audience="cloud").reveal()
    assert verify_assertion(new, jwks=legacy_jwks, issuer=ISSUER, audience="cloud").sub == "cus_1"


def test_a_key_file_written_with_the_rfc9864_name_signs_eddsa(tmp_path: Path) -> None:
    path = tmp_path / "assertion-keys.json"
    first = AssertionSigner.load_or_create(path, issuer=ISSUER)
    doc = json.loads(path.read_text())
    for entry in doc["keys"]:
        entry["jwk"]["alg"] = "Ed25519"
    path.write_text(json.dumps(doc))
    reloaded = AssertionSigner.load_or_create(path, issuer=ISSUER)
    token = reloaded.sign(subject="cus_1", email="a@example.com", audience="cloud").reveal()
    assert _segments(token)[0]["alg"] == "EdDSA" and reloaded.current_kid == first.current_kid
    verify_assertion(token, jwks=reloaded.jwks(), issuer=ISSUER, audience="cloud")


def test_lifetime_is_capped_at_five_minutes(signer: AssertionSigner) -> None:
    with pytest.raises(ValueError):
        signer.sign(subject="cus_1", email="a@example.com", audience="cloud", ttl_seconds=301)


def test_expired_refused_but_small_skew_tolerated(signer: AssertionSigner) -> None:
    old = datetime.now(UTC) - timedelta(seconds=400)
    token = signer.sign(subject="cus_1", email="a@example.com", audience="cloud", issued_at=old)
    assert _refused(token.reveal(), signer) == "assertion_expired"
    just_expired = datetime.now(UTC) - timedelta(seconds=310)  # expired 10 s ago, within 30 s leeway
    token = signer.sign(subject="cus_1", email="a@example.com", audience="cloud", issued_at=just_expired)
    verify_assertion(token.reveal(), jwks=signer.jwks(), issuer=ISSUER, audience="cloud")


def test_not_yet_valid_refused(signer: AssertionSigner) -> None:
    future = datetime.now(UTC) + timedelta(seconds=120)
    token = signer.sign(subject="cus_1", email="a@example.com", audience="cloud", issued_at=future)
    assert _refused(token.reveal(), signer) == "assertion_invalid"


def test_wrong_audience_and_issuer_refused(signer: AssertionSigner) -> None:
    token = signer.sign(subject="cus_1", email="a@example.com", audience="db").reveal()
    assert _refused(token, signer, audience="cloud") == "assertion_wrong_audience"
    assert _refused(token, signer, audience="db", issuer="http://evil.example") == "assertion_invalid"


def test_forged_signatures_refused(signer: AssertionSigner) -> None:
    forger = AssertionSigner.ephemeral(issuer=ISSUER)
    unknown_kid = forger.sign(subject="cus_1", email="a@example.com", audience="cloud").reveal()
    assert _refused(unknown_kid, signer) == "assertion_invalid"
    # same kid as the real key, different private key
    fake = OKPKey.generate_key("Ed25519", parameters={"kid": signer.current_kid})
    real = signer.sign(subject="cus_1", email="a@example.com", audience="cloud").reveal()
    claims = _segments(real)[1]
    for alg in ("EdDSA", "Ed25519"):
        header = {"alg": alg, "kid": signer.current_kid, "typ": ASSERTION_TYP}
        same_kid = jwt.encode(header, claims, fake, algorithms=[alg])
        assert _refused(same_kid, signer) == "assertion_invalid"
    # a real signature over tampered claims
    h, _, sig = real.split(".")
    tampered = f"{h}.{_b64({**claims, 'email': 'mallory@example.com'})}.{sig}"
    assert _refused(tampered, signer) == "assertion_invalid"


def test_algorithm_allow_list_and_typ(signer: AssertionSigner) -> None:
    claims = _segments(signer.sign(subject="cus_1", email="a@example.com", audience="cloud").reveal())[1]
    alg_none = f"{_b64({'alg': 'none', 'typ': ASSERTION_TYP})}.{_b64(claims)}."
    assert _refused(alg_none, signer) == "assertion_invalid"
    key = signer._keys[-1].key
    plain_jwt = jwt.encode({"alg": "EdDSA", "kid": signer.current_kid}, claims, key, algorithms=["EdDSA"])
    assert _segments(plain_jwt)[0]["typ"] == "JWT"
    assert _refused(plain_jwt, signer) == "assertion_invalid"
    long_lived = {**claims, "exp": claims["iat"] + 3600}  # type: ignore[operator]
    header = {"alg": "EdDSA", "kid": signer.current_kid, "typ": ASSERTION_TYP}
    assert _refused(jwt.encode(header, long_lived, key, algorithms=["EdDSA"]), signer) == "assertion_invalid"
    unverified = {**claims, "email_verified": False}
    assert _refused(jwt.encode(header, unverified, key, algorithms=["EdDSA"]), signer) == "assertion_invalid"
    assert _refused("not-a-jwt", signer) == "assertion_invalid"


def test_key_file_is_private_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "data" / "assertion-keys.json"
    first = AssertionSigner.load_or_create(path, issuer=ISSUER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = first.sign(subject="cus_1", email="a@example.com", audience="mail").reveal()
    again = AssertionSigner.load_or_create(path, issuer=ISSUER)
    assert again.current_kid == first.current_kid
    verify_assertion(token, jwks=again.jwks(), issuer=ISSUER, audience="mail")


def test_rotation_keeps_old_key_until_its_assertions_expire(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    signer = AssertionSigner.load_or_create(path, issuer=ISSUER)
    old_kid = signer.current_kid
    old_token = signer.sign(subject="cus_1", email="a@example.com", audience="cloud").reveal()
    new_kid = signer.rotate()
    assert new_kid != old_kid
    assert (
        _segments(signer.sign(subject="c", email="a@example.com", audience="cloud").reveal())[0]["kid"]
        == new_kid
    )
    assert {k["kid"] for k in signer.jwks()["keys"]} == {old_kid, new_kid}
    verify_assertion(old_token, jwks=signer.jwks(), issuer=ISSUER, audience="cloud")
    reloaded = AssertionSigner.load_or_create(path, issuer=ISSUER)
    assert {k["kid"] for k in reloaded.jwks()["keys"]} == {old_kid, new_kid}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # once the grace period has passed, the old key is no longer published
    reloaded._keys[0].retired_at = int(time.time()) - RETIRED_KEY_GRACE_SECONDS - 1
    assert {k["kid"] for k in reloaded.jwks()["keys"]} == {new_kid}
    assert _refused(old_token, reloaded) == "assertion_invalid"
