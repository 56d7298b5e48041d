"""The server key file's authority and signing sections, and the proofs made with them (no server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.authority import VERIFIER, ProofKind, ProofVerifier
from providers.assertions import AssertionSigner
from quartermaster.crypto.authority import AuthoritySigner
from quartermaster.keys import KeyMaterialMissing, Keyring, NamedKey, load_keyring, write_key_file


def _old_file(tmp_path: Path) -> tuple[Path, Keyring]:
    base = Keyring.generate()
    old = Keyring(payload=base.payload, seal=base.seal, principal=base.principal)
    path = tmp_path / "keys.json"
    write_key_file(path, old)
    return path, old


def test_an_old_key_file_gains_the_server_sections_on_a_dev_start(tmp_path: Path) -> None:
    path, old = _old_file(tmp_path)
    legacy = AssertionSigner.load_or_create(tmp_path / "assertion-keys.json", issuer="http://x")
    ring = load_keyring(path, create=True)
    assert ring.missing() == []
    assert (ring.payload, ring.seal, ring.principal) == (old.payload, old.seal, old.principal)
    # the old assertion keys were imported, so the published JWKS does not change
    assert ring.assertion_signer("http://x").jwks() == legacy.jwks()
    assert path.stat().st_mode & 0o777 == 0o600
    assert Keyring.from_json(path.read_text()) == ring


def test_outside_dev_a_missing_section_is_a_clear_error(tmp_path: Path) -> None:
    path, _ = _old_file(tmp_path)
    ring = load_keyring(path, create=False)
    with pytest.raises(KeyMaterialMissing, match="authority"):
        ring.authority_keys()
    with pytest.raises(KeyMaterialMissing, match="session"):
        ring.signing_keys("session")


def test_codec_only_holds_payload_keys_and_rotation_appends_authority_keys() -> None:
    ring = Keyring.generate()
    assert json.loads(ring.codec_only().to_json()).keys() == {"payload", "seal"}
    assert ring.codec_only().seal == () and ring.codec_only().authority == ()
    rotated = ring.rotated()
    assert [k.kid for k in rotated.authority] == ["a1", "a2"] and rotated.authority[0] == ring.authority[0]


def test_a_proof_covers_kind_target_and_the_exact_change() -> None:
    keys = (NamedKey("a1", b"k" * 32), NamedKey("a2", b"j" * 32))
    verifier = ProofVerifier()
    verifier.install((k.kid, k.key) for k in keys)
    old_signer, signer = AuthoritySigner(keys[:1]), AuthoritySigner(keys)
    change = {"limit": {"amount": 100, "currency": "usd"}, "version": 1}
    proof = signer.sign(ProofKind.LEDGER_SET_LIMIT, "ledger-x", change)
    assert proof.startswith("qa1.a2.")
    assert verifier.verify(proof, kind="ledger.set_limit", target="ledger-x", change=change)
    # proofs of the old key still verify after rotation
    assert verifier.verify(
        old_signer.sign(ProofKind.LEDGER_SET_LIMIT, "ledger-x", change),
        kind="ledger.set_limit",
        target="ledger-x",
        change=change,
    )
    assert not verifier.verify(proof, kind="limits.set", target="ledger-x", change=change)
    assert not verifier.verify(proof, kind="ledger.set_limit", target="ledger-y", change=change)
    assert not verifier.verify(
        proof, kind="ledger.set_limit", target="ledger-x", change={**change, "version": 2}
    )
    assert not verifier.verify(None, kind="ledger.set_limit", target="ledger-x", change=change)
    assert not verifier.verify("qa1.a1.1.xx", kind="ledger.set_limit", target="ledger-x", change=change)
    stranger = AuthoritySigner((NamedKey("a2", b"z" * 32),))
    forged = stranger.sign(ProofKind.LEDGER_SET_LIMIT, "ledger-x", change)
    assert not verifier.verify(forged, kind="ledger.set_limit", target="ledger-x", change=change)


def test_approval_codes_are_keyed() -> None:
    keys = (NamedKey("a1", b"k" * 32),)
    verifier = ProofVerifier()
    verifier.install((k.kid, k.key) for k in keys)
    ticket = AuthoritySigner(keys).code_ticket("provision-x.terms", "ABCDE-FGHJK")
    assert ticket.kid == "a1"
    assert verifier.code_matches("a1", "provision-x.terms", "ABCDE-FGHJK", ticket.code_hash)
    assert not verifier.code_matches("a1", "provision-y.terms", "ABCDE-FGHJK", ticket.code_hash)
    assert not verifier.code_matches("a9", "provision-x.terms", "ABCDE-FGHJK", ticket.code_hash)
    # without the key, the hash is not the plain sha256 an offline guess would try
    import hashlib

    assert ticket.code_hash != hashlib.sha256(b"provision-x.terms:ABCDE-FGHJK").hexdigest()
    assert VERIFIER is not verifier
