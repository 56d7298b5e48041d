"""EdDSA over Ed25519 as every Quartermaster token uses it: one place that names the algorithm.

Tokens are signed with JWS `alg: "EdDSA"` (RFC 8037), the name every JOSE library verifies (PyJWT,
jwcrypto, python-jose, joserfc, jose for Node). RFC 9864's fully specified `Ed25519` names the same
signature over the same keys; tokens signed under that name before (Quartermaster up to 0.2) still
verify, so both names are accepted on input and nothing else is (no `none`, no HMAC confusion).

A JWK's `alg` member pins one name; joserfc refuses a key designed for `Ed25519` when the token says
`EdDSA`. So keys are published with `alg: "EdDSA"`, and before verifying, the `alg` member of an OKP
Ed25519 key that says either name is dropped: the key then verifies both names and nothing else, since
only the two names above are ever allowed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet, OKPKey

#: RFC 8037's name: what a token's header says
SIGNING_ALGORITHM = "EdDSA"
#: what a verifier accepts: RFC 8037's name and RFC 9864's fully specified one (older tokens)
ACCEPTED_ALGORITHMS = ("EdDSA", "Ed25519")
#: the private members of an OKP JWK (RFC 8037 section 2): never published
PRIVATE_MEMBERS = frozenset({"d"})

# joserfc warns on every use of `EdDSA` since RFC 9864 deprecated the name; it is the interoperable
# one (PyJWT knows no other), so the warning would only repeat this module's decision in every log
warnings.filterwarnings("ignore", message=r"EdDSA is deprecated", category=SecurityWarning)


def generate_key(kid: str) -> OKPKey:
    """A fresh Ed25519 signing key named `kid`."""
    return OKPKey.generate_key("Ed25519", parameters={"kid": kid, "use": "sig", "alg": SIGNING_ALGORITHM})


def import_signing_key(jwk: Mapping[str, Any]) -> OKPKey:
    """A private key from a key file; one written as `alg: "Ed25519"` signs as `EdDSA` from now on."""
    doc = dict(jwk)
    if doc.get("alg") in ACCEPTED_ALGORITHMS:
        doc["alg"] = SIGNING_ALGORITHM
    return OKPKey.import_key(doc)


def public_jwk(key: OKPKey) -> dict[str, Any]:
    """The public half of `key` as published: `kty`, `crv`, `x`, `kid`, `use: sig`, `alg: EdDSA`."""
    doc = dict(key.as_dict(private=False))
    doc = {k: v for k, v in doc.items() if k not in PRIVATE_MEMBERS}
    doc["use"] = "sig"
    doc["alg"] = SIGNING_ALGORITHM
    return doc


def verification_key_set(jwks: Mapping[str, Any]) -> KeySet:
    """A JWKS document as a joserfc KeySet whose Ed25519 keys verify under either accepted name.
    Keys of other types or algorithms are kept as they are. Raises what joserfc raises on bad keys."""
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise ValueError("a JWKS is {'keys': [...]}")
    normalized: list[Any] = []
    for key in keys:
        if not isinstance(key, Mapping):
            raise ValueError("a JWKS key is an object")
        doc = dict(key)
        if doc.get("kty") == "OKP" and doc.get("crv") == "Ed25519" and doc.get("alg") in ACCEPTED_ALGORITHMS:
            del doc["alg"]
        normalized.append(doc)
    return KeySet.import_key_set({"keys": normalized})
