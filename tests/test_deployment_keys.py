"""A worker or API replica refuses to start when its keys are not the deployment's (issue 15 item 2):
the published key set in the shared store decides (quartermaster/deployment_keys.py). Unit cases on
both backends, then the real processes: with the deployment's key file they start and serve; with a
key file whose assertion key is not the one the replicas publish in their JWKS they exit at once with
one `KEYS_MISMATCH` line and exit code 2, before serving or polling anything."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from providers.store import Store, open_store
from quartermaster.deployment_keys import KeysMismatch, check_deployment_keys, fingerprints
from quartermaster.keys import Keyring, write_key_file
from tests.fixtures.hosts import HostProcess, running, server_env, start_api, start_worker
from tests.fixtures.servers import free_port


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (
        str(tmp_path / "quartermaster.sqlite")
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_db")
    )
    opened = open_store(url)
    yield opened
    opened.close()


def other_assertion_key(keyring: Keyring) -> Keyring:
    """The same key file with another assertion key: what a host gets when its file lacked the
    section and a dev start generated one (the issue's `assertion_invalid` from host B)."""
    fresh = replace(keyring, assertion=None).completed()
    assert fresh.assertion != keyring.assertion
    return fresh


def test_fingerprints_name_keys_without_revealing_them(keyring: Keyring) -> None:
    published = json.dumps(fingerprints(keyring))
    doc = json.loads(keyring.to_json())
    secrets = [k["key"] for s in ("payload", "seal", "authority") for k in doc[s]] + [doc["principal"]]
    secrets += [e["jwk"]["d"] for s in ("assertion", "attestor", "session") for e in doc[s]["keys"]]
    assert secrets and not any(s in published for s in secrets)
    assert set(fingerprints(keyring)) == {
        "payload",
        "seal",
        "authority",
        "principal",
        "assertion",
        "attestor",
        "session",
    }


def test_the_first_process_publishes_and_the_same_keys_start(store: Store, keyring: Keyring) -> None:
    assert check_deployment_keys(store, keyring, role="worker").outcome == "published"
    assert check_deployment_keys(store, keyring, role="api").outcome == "same"
    published = store.keys.published_now()
    assert published is not None and published.fingerprints == fingerprints(keyring)


def test_another_assertion_key_is_refused_and_changes_nothing(store: Store, keyring: Keyring) -> None:
    check_deployment_keys(store, keyring, role="worker")
    before = store.keys.published_now()
    with pytest.raises(KeysMismatch, match="lacks the `assertion` key"):
        check_deployment_keys(store, other_assertion_key(keyring), role="worker")
    assert store.keys.published_now() == before


def test_a_rotation_rolls_out_and_an_old_file_is_then_refused(store: Store, keyring: Keyring) -> None:
    check_deployment_keys(store, keyring, role="worker")
    rotated = keyring.rotated()  # payload p2, seal s2, authority a2 appended
    verdict = check_deployment_keys(store, rotated, role="worker")
    assert verdict.outcome == "newer" and set(verdict.sections) == {"payload", "seal", "authority"}
    published = store.keys.published_now()
    assert published is not None and published.version == 2
    # a process restarted with the file from before the rotation cannot decrypt what the others write
    with pytest.raises(KeysMismatch, match="lacks the `payload` key"):
        check_deployment_keys(store, keyring, role="api")


def test_one_kid_with_two_keys_is_refused(store: Store, keyring: Keyring) -> None:
    check_deployment_keys(store, keyring, role="worker")
    forged = replace(keyring, principal=bytes(32))
    with pytest.raises(KeysMismatch, match="`principal` key principal is not the key"):
        check_deployment_keys(store, forged, role="worker")


# -- the real processes ------------------------------------------------------------------------------
def host(tmp_path: Path, name: str, keyring: Keyring, client: Client, database_url: str) -> dict[str, str]:
    data = tmp_path / name
    data.mkdir()
    write_key_file(data / "keys.json", keyring)
    return server_env(
        data_dir=data,
        keys_file=data / "keys.json",
        temporal_address=client.service_client.config.target_host,
        task_queue=f"qm-keys-{uuid.uuid4().hex[:6]}",
        public_url="http://127.0.0.1:9",
        providers={"cloud": "http://127.0.0.1:9"},
        stripe_url="http://127.0.0.1:9",
        webhook_secret="whsec_test",
        database_url=database_url,
    )


def refused(proc: HostProcess) -> tuple[int, str]:
    try:
        proc.proc.wait(60)
    except Exception:
        proc.kill()
        raise AssertionError(f"the {proc.role} started with keys that are not the deployment's") from None
    return proc.proc.returncode, proc.output()


def test_processes_with_another_assertion_key_refuse_to_start(
    tmp_path: Path, keyring: Keyring, client: Client, postgres_db: str
) -> None:
    good_api = start_api(host(tmp_path, "host-a", keyring, client, postgres_db), "api", free_port())
    good_worker = start_worker(host(tmp_path, "host-a2", keyring, client, postgres_db), "worker")
    with running(good_api, good_worker):
        served = httpx.get(f"{good_api.url}/.well-known/jwks.json").json()
        bad = other_assertion_key(keyring)
        bad_kid = fingerprints(bad)["assertion"][-1][0]
        assert bad_kid not in {k["kid"] for k in served["keys"]}  # what the replicas serve lacks it
        bad_api = start_api(host(tmp_path, "host-b", bad, client, postgres_db), "api", free_port())
        bad_worker = start_worker(host(tmp_path, "host-b2", bad, client, postgres_db), "worker")
        for proc in (bad_api, bad_worker):
            code, out = refused(proc)
            lines = [line for line in out.splitlines() if line.strip()]
            assert code == 2, out[-2000:]
            assert lines[-1].startswith("KEYS_MISMATCH: ") and "`assertion`" in lines[-1], out[-2000:]
            assert "Traceback" not in out
            assert "worker polling" not in out
            # the message names key ids, never key material
            assert all(e["jwk"]["d"] not in out for e in json.loads(bad.to_json())["assertion"]["keys"])
        # the deployment's processes keep serving
        assert good_api.proc.poll() is None and good_worker.proc.poll() is None
