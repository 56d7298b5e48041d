"""The UI codec server over real HTTP on loopback: redaction, namespace, CORS and bearer checks."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from pydantic import BaseModel
from temporalio.api.common.v1 import Payloads
from temporalio.api.failure.v1 import Failure
from temporalio.exceptions import ApplicationError

from models.secret import Secret
from quartermaster.codec import EncryptionCodec
from quartermaster.codec_server import allowed_origins, create_app
from quartermaster.converter import data_converter
from quartermaster.keys import Keyring, write_key_file
from tests.fixtures.servers import free_port, serve_asgi
from tests.leak_scan import find_in_blobs

UI_ORIGIN = "http://localhost:18233"
ROOT = Path(__file__).resolve().parent.parent


class Grant(BaseModel):
    resource_id: str
    api_token: Secret


def _body(payloads: Payloads) -> str:
    # exactly what the UI sends: the protobuf JSON form, bytes as base64
    return json_format.MessageToJson(payloads)


def _headers(namespace: str = "default", **extra: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Namespace": namespace, "Origin": UI_ORIGIN, **extra}


@pytest.fixture
def keys() -> Keyring:
    return Keyring.generate()


async def _encoded(keys: Keyring, token: str) -> Payloads:
    return await data_converter(EncryptionCodec(keys)).encode_wrapper(
        [Grant(resource_id="res_visible_77", api_token=Secret(token))]
    )


async def test_decode_shows_fields_and_redacts_secrets(keys: Keyring) -> None:
    token = "tok" + secrets.token_hex(12)
    app = create_app(
        keyring=keys.codec_only(), namespace="default", allowed_origin=UI_ORIGIN, auth_token=None, dev=True
    )
    with serve_asgi(app) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            resp = await http.post("/decode", content=_body(await _encoded(keys, token)), headers=_headers())
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == UI_ORIGIN
    decoded = json_format.Parse(resp.text, Payloads())
    [payload] = decoded.payloads
    assert payload.metadata["encoding"] == b"json/plain"
    doc = json.loads(payload.data)
    assert doc == {"resource_id": "res_visible_77", "api_token": {"__qm_secret__": "***"}}
    assert find_in_blobs({"response": resp.content}, [token]) == []


async def test_decode_handles_failure_attributes_and_redacts_token_shapes(keys: Keyring) -> None:
    token = "sk_live_" + secrets.token_hex(12)
    failure = Failure()
    try:
        raise ApplicationError(f"provider refused key {token}", type="ProviderRefused")
    except ApplicationError as exc:
        await data_converter(EncryptionCodec(keys)).encode_failure(exc, failure)
    body = _body(Payloads(payloads=[failure.encoded_attributes]))
    # a full key file given by mistake: the server still drops the seal key
    app = create_app(keyring=keys, namespace="default", allowed_origin=UI_ORIGIN, auth_token=None, dev=True)
    with serve_asgi(app) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            resp = await http.post("/api/decode", content=body, headers=_headers())
    assert resp.status_code == 200
    [payload] = json_format.Parse(resp.text, Payloads()).payloads
    attrs = json.loads(payload.data)
    assert attrs["message"] == "provider refused key ***"
    assert "stack_trace" in attrs
    assert find_in_blobs({"response": resp.content}, [token]) == []


async def test_namespace_mismatch_is_refused(keys: Keyring) -> None:
    app = create_app(keyring=keys, namespace="prod", allowed_origin=UI_ORIGIN, auth_token=None, dev=True)
    body = _body(await _encoded(keys, "tok" + secrets.token_hex(8)))
    with serve_asgi(app) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            wrong = await http.post("/decode", content=body, headers=_headers("default"))
            missing = await http.post("/decode", content=body, headers={"Content-Type": "application/json"})
            right = await http.post("/decode", content=body, headers=_headers("prod"))
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "NAMESPACE_NOT_ALLOWED"
    assert missing.status_code == 403
    assert b"res_visible_77" not in wrong.content + missing.content
    assert right.status_code == 200


async def test_only_the_ui_origin_gets_a_cors_grant(keys: Keyring) -> None:
    app = create_app(keyring=keys, namespace="default", allowed_origin=UI_ORIGIN, auth_token=None, dev=True)
    body = _body(await _encoded(keys, "tok" + secrets.token_hex(8)))
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace",
    }
    with serve_asgi(app) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            good = await http.options("/decode", headers={"Origin": UI_ORIGIN, **preflight})
            evil = await http.options("/decode", headers={"Origin": "http://evil.example", **preflight})
            twin = await http.options("/decode", headers={"Origin": "http://127.0.0.1:18233", **preflight})
            evil_post = await http.post(
                "/decode", content=body, headers=_headers(Origin="http://localhost:9999")
            )
    assert good.status_code == 204
    assert twin.headers["access-control-allow-origin"] == "http://127.0.0.1:18233"  # dev: same UI
    assert good.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "x-namespace" in good.headers["access-control-allow-headers"]
    assert "POST" in good.headers["access-control-allow-methods"]
    assert evil.status_code == 403
    assert "access-control-allow-origin" not in evil.headers
    assert evil_post.status_code == 403
    assert "access-control-allow-origin" not in evil_post.headers
    assert b"res_visible_77" not in evil_post.content


async def test_bearer_token_required_outside_dev(keys: Keyring) -> None:
    with pytest.raises(ValueError, match="QM_CODEC_AUTH_TOKEN"):
        create_app(keyring=keys, namespace="default", allowed_origin=UI_ORIGIN, auth_token=None, dev=False)
    bearer = secrets.token_urlsafe(24)
    app = create_app(
        keyring=keys, namespace="default", allowed_origin=UI_ORIGIN, auth_token=bearer, dev=False
    )
    body = _body(await _encoded(keys, "tok" + secrets.token_hex(8)))
    with serve_asgi(app) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            none = await http.post("/decode", content=body, headers=_headers())
            wrong = await http.post("/decode", content=body, headers=_headers(Authorization="Bearer nope"))
            # preflight carries no credentials and must still succeed, or the UI could never send them
            pre = await http.options(
                "/decode", headers={"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST"}
            )
            ok = await http.post("/decode", content=body, headers=_headers(Authorization=f"Bearer {bearer}"))
    assert "http://127.0.0.1:18233" not in allowed_origins(UI_ORIGIN, dev=False)
    assert none.status_code == 401
    assert wrong.status_code == 401
    assert b"res_visible_77" not in none.content + wrong.content
    assert pre.status_code == 204
    assert "authorization" in pre.headers["access-control-allow-headers"]
    assert ok.status_code == 200
    assert b"res_visible_77" in base64.b64decode(ok.json()["payloads"][0]["data"])


async def test_bad_bodies_and_foreign_ciphertext_are_400(keys: Keyring) -> None:
    app = create_app(keyring=keys, namespace="default", allowed_origin=UI_ORIGIN, auth_token=None, dev=True)
    foreign = _body(await _encoded(Keyring.generate().rotated(), "tok" + secrets.token_hex(8)))
    with serve_asgi(app) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            junk = await http.post("/decode", content="not json", headers=_headers())
            other = await http.post("/decode", content=foreign, headers=_headers())
            elsewhere = await http.post("/status", content="{}", headers=_headers())
    assert junk.status_code == 400
    assert other.status_code == 400
    assert other.json()["error"]["code"] == "CODEC_ERROR"
    assert elsewhere.status_code == 404


def _spawn_codec_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        "QM_DATA_DIR": str(data_dir),
        "QM_DEV": "1",
        "QM_CODEC_CORS_ORIGIN": UI_ORIGIN,
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "quartermaster.codec_server", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_reloads_rotated_key_file_and_main_starts_from_env(tmp_path: Path) -> None:
    """`python -m quartermaster.codec_server` as `qm dev` runs it, then a rotation while it runs."""
    full = Keyring.generate()
    write_key_file(tmp_path / "codec-keys.json", full.codec_only())
    port = free_port()
    proc = _spawn_codec_server(tmp_path, port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    resp = await http.post("/decode", content=_body(await _encoded(full, "t" * 12)),
                                           headers=_headers())  # fmt: skip
                    break
                except httpx.ConnectError:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    assert time.monotonic() < deadline, "codec server did not start"
                    await asyncio.sleep(0.1)  # polling for the port to open
            assert resp.status_code == 200
            rotated = full.rotated()
            write_key_file(tmp_path / "codec-keys.json", rotated.codec_only())
            new_body = _body(await _encoded(rotated, "t" * 12))
            resp = await http.post("/decode", content=new_body, headers=_headers())
            assert resp.status_code == 200, resp.text
            assert b"res_visible_77" in base64.b64decode(resp.json()["payloads"][0]["data"])
    finally:
        proc.terminate()
        proc.wait(10)
