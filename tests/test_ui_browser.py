"""The Temporal Web UI in real headless chromium: decoded through the codec server, secrets redacted.

A real `temporal server start-dev` (UI wired to our codec server with `--ui-codec-endpoint`) runs a
workflow whose input holds a visible field and a `Secret` canary. Through the codec server the UI's
Input card shows the field and ``***``; the canary appears nowhere in the page. Restarted on the same
database without the codec endpoint, the UI shows only the ciphertext.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from pathlib import Path

import pytest
from pydantic import BaseModel
from temporalio import workflow
from temporalio.worker import Worker

from models.secret import Secret
from quartermaster.codec import EncryptionCodec
from quartermaster.codec_server import create_app
from quartermaster.converter import data_converter
from quartermaster.keys import Keyring
from tests.fixtures.browser import Page, connect_when_ready, element_text, load_page, temporal_dev_server
from tests.fixtures.servers import free_port, serve_asgi
from tests.leak_scan import find_in_blobs

pytestmark = pytest.mark.browser


class GrantView(BaseModel):
    visible_note: str
    api_token: Secret


# unsandboxed: the sandbox would re-import this test module (pytest and all); the UI is under test here
@workflow.defn(sandboxed=False)
class UiProbe:
    @workflow.run
    async def run(self, inp: GrantView) -> GrantView:
        return inp


def _load_until(chromium: str, url: str, workdir: Path, name: str, ready: str) -> Page:
    """Load the page; reload (fresh profile) if the SPA had not rendered `ready` yet. At most 3 tries."""
    page = load_page(chromium, url, workdir, name)
    for attempt in range(2):
        text = element_text(page.dom, "Input")
        if text is not None and ready in text:
            break
        print(f"{name}: the page was not rendered yet, loading again (attempt {attempt + 2})")
        page = load_page(chromium, url, workdir, f"{name}-retry{attempt}", budget_ms=30000)
    return page


async def test_ui_shows_decoded_input_with_secret_redacted(chromium: str, tmp_path: Path) -> None:
    keyring = Keyring.generate()
    canary = "cnry" + secrets.token_hex(12)
    visible = "visible_" + secrets.token_hex(6)
    workflow_id = f"ui-probe-{uuid.uuid4().hex[:8]}"
    port, ui_port = free_port(), free_port()
    ui_origin = f"http://127.0.0.1:{ui_port}"
    db_file = tmp_path / "temporal.sqlite"
    codec_app = create_app(
        keyring=keyring.codec_only(), namespace="default", allowed_origin=ui_origin, auth_token=None, dev=True
    )

    with serve_asgi(codec_app) as codec_url:
        with temporal_dev_server(db_file, codec_endpoint=codec_url, port=port, ui_port=ui_port) as server:
            client = await connect_when_ready(server.address, data_converter(EncryptionCodec(keyring)))
            async with Worker(client, task_queue=workflow_id, workflows=[UiProbe]):
                handle = await client.start_workflow(
                    UiProbe.run,
                    GrantView(visible_note=visible, api_token=Secret(canary)),
                    id=workflow_id,
                    task_queue=workflow_id,
                )
                assert (await handle.result()).api_token.reveal() == canary
            history = await handle.fetch_history()
            url = f"{server.ui_url}/namespaces/default/workflows/{workflow_id}/{handle.result_run_id}/history"
            decoded = _load_until(chromium, url, tmp_path, "ui-with-codec", ready=visible)

    shown = element_text(decoded.dom, "Input")
    assert shown is not None, "the workflow page has no Input card"
    assert json.loads(shown) == {"visible_note": visible, "api_token": {"__qm_secret__": "***"}}
    assert find_in_blobs({"dom": decoded.dom.encode()}, [canary]) == []
    assert decoded.screenshot.read_bytes().startswith(b"\x89PNG")

    # the same history, UI without a codec endpoint: only ciphertext
    [input_payload] = history.events[0].workflow_execution_started_event_attributes.input.payloads
    ciphertext = base64.b64encode(input_payload.data).decode()
    with temporal_dev_server(db_file, codec_endpoint=None, port=port, ui_port=ui_port) as server:
        encrypted = _load_until(chromium, url, tmp_path, "ui-without-codec", ready=ciphertext[:16])
    shown = element_text(encrypted.dom, "Input")
    assert shown is not None, "the workflow page has no Input card"
    assert json.loads(shown) == ciphertext
    assert visible not in encrypted.dom
    assert find_in_blobs({"dom": encrypted.dom.encode()}, [canary, visible]) == []
    assert encrypted.screenshot.read_bytes().startswith(b"\x89PNG")
