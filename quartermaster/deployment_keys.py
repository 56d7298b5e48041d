"""Every worker and API replica of a deployment must hold the same key material; a process whose keys
differ from what the deployment publishes refuses to start (docs/decisions.md, "Many hosts").

What is published is one row in the shared store (`providers.store`, `KeySetStore`): for each section
of the key file, the ordered list of (kid, fingerprint). Fingerprints reveal nothing: an Ed25519 key
is named by its public key's RFC 7638 thumbprint (the same keys the JWKS serves), a symmetric key by a
key check value (HMAC-SHA256 of a fixed label under the key, 128 bits). At start each process compares
its own list with the published one, section by section:

- the same kid with a different fingerprint: refused (two files claim one key);
- the key the deployment signs / encrypts with (the last published) is not in this process's file:
  refused (it could not verify or decrypt what the others write: e.g. its assertion key would be
  missing from the JWKS the replicas serve, and the providers would answer `assertion_invalid`);
- this process's last key is new and the deployment's last key is in its file: a rotation is rolling
  out; this process publishes its list (compare-and-set);
- otherwise (the same signing key; older keys retired or not): accepted as it is.

The first process to start on an empty store publishes its list.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass

from models.errors import ErrorCode, exit_code
from providers.store import Store
from providers.store.interfaces import PublishedKeySet
from quartermaster.keys import SIGNING_SECTIONS, Keyring

_KEY_CHECK_LABEL = b"quartermaster key check v1"
#: sections in the order they are compared (and named in messages)
SECTIONS = ("payload", "seal", "authority", "principal", *SIGNING_SECTIONS)

Fingerprints = dict[str, list[list[str]]]
log = logging.getLogger("quartermaster.keys")


class KeysMismatch(Exception):
    """This process's keys do not match the deployment's. The message names kids, never keys."""

    code = ErrorCode.KEYS_MISMATCH


def _key_check_value(key: bytes) -> str:
    return hmac.new(key, _KEY_CHECK_LABEL, hashlib.sha256).hexdigest()[:32]


def _thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint of an OKP public key (the members `crv`, `kty`, `x`)."""
    members = json.dumps({m: jwk[m] for m in ("crv", "kty", "x")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest()).rstrip(b"=").decode()


def fingerprints(keyring: Keyring) -> Fingerprints:
    """What this key file would publish: per section, [kid, fingerprint] in the file's order."""
    out: Fingerprints = {}
    for section in ("payload", "seal", "authority"):
        named = getattr(keyring, section)
        if named:
            out[section] = [[k.kid, _key_check_value(k.key)] for k in named]
    if keyring.principal is not None:
        out["principal"] = [["principal", _key_check_value(keyring.principal)]]
    for section in SIGNING_SECTIONS:
        doc = getattr(keyring, section)
        if doc is not None:
            jwks = [entry.get("jwk", entry) for entry in json.loads(doc)["keys"]]
            out[section] = [[str(j["kid"]), _thumbprint(j)] for j in jwks]
    return out


@dataclass(frozen=True)
class Verdict:
    #: "same": nothing to do; "newer": this process rolls a rotation out and publishes its list
    outcome: str
    sections: tuple[str, ...] = ()


def compare(mine: Fingerprints, published: Fingerprints, *, publisher: str = "the deployment") -> Verdict:
    """Decide for one process (see the module docstring); raises `KeysMismatch`."""
    newer: list[str] = []
    for section in SECTIONS:
        theirs, ours = published.get(section), mine.get(section)
        if theirs is None and ours is None:
            continue
        if not theirs:
            newer.append(section)  # the deployment had none (an older release): this adds it
            continue
        if not ours:
            raise KeysMismatch(f"this process's key file has no `{section}` keys; {publisher} has them")
        known = dict((kid, fp) for kid, fp in theirs)
        for kid, fp in ours:
            if kid in known and not hmac.compare_digest(known[kid], fp):
                raise KeysMismatch(
                    f"this process's `{section}` key {kid} is not the key {publisher} published under "
                    "that id: give every worker and API replica the same key file"
                )
        signing_kid = theirs[-1][0]
        if signing_kid not in dict((kid, fp) for kid, fp in ours):
            raise KeysMismatch(
                f"this process's key file lacks the `{section}` key {signing_kid} that {publisher} "
                "signs or encrypts with: give every worker and API replica the same key file"
            )
        if ours[-1][0] not in known:
            newer.append(section)  # its newest key is new and it still holds the deployment's: rotation
    return Verdict("newer" if newer else "same", tuple(newer))


def describe(p: PublishedKeySet) -> str:
    return f"{p.publisher} (published {p.published_at:%Y-%m-%d %H:%M} UTC)"


def check_deployment_keys(store: Store, keyring: Keyring, *, role: str) -> Verdict:
    """Compare this process's keys with the deployment's (publishing them when none are, or when
    this process rolls a rotation out); raises `KeysMismatch`. Synchronous: it runs once at start."""
    mine = fingerprints(keyring)
    publisher = f"{role} {os.getpid()}@{socket.gethostname()}"
    for _ in range(5):  # compare-and-set: re-read when another process published in between
        current = store.keys.published_now()
        if current is None:
            if store.keys.publish_now(fingerprints=mine, publisher=publisher, replaces=0):
                return Verdict("published")
            continue
        verdict = compare(mine, current.fingerprints, publisher=describe(current))
        if verdict.outcome == "same":
            return verdict
        if store.keys.publish_now(fingerprints=mine, publisher=publisher, replaces=current.version):
            return verdict
    raise KeysMismatch("the published key set kept changing while this process started; start it again")


def start_or_refuse(store: Store, keyring: Keyring, *, role: str) -> None:
    """At a worker's or API replica's start: return when its keys match the deployment's; otherwise
    print one line (`KEYS_MISMATCH: ...`) to stderr and exit with code 2 before serving anything."""
    try:
        verdict = check_deployment_keys(store, keyring, role=role)
    except KeysMismatch as exc:
        print(f"{exc.code}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exit_code(exc.code)) from None
    if verdict.outcome == "newer":
        log.info("published the rotated key set (%s)", ", ".join(verdict.sections))
