"""A page session opened on one API replica works on another (issue 15): the sessions are rows in the
shared store, not in a replica. Two API apps on real HTTP with their own data directories; the human
logs in on the pages of replica A, lists their approvals on replica B, logs out on B, and A no longer
knows the session. The broken variant gives B a store of its own (as before: `pages.sqlite` per
replica) and the same steps show the session missing on B."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from providers.store import open_store
from quartermaster.api.app import create_app
from quartermaster.api.page_sessions import COOKIE
from quartermaster.api.services import build_services
from quartermaster.codec import SecretBox
from tests.fixtures.servers import serve_asgi
from tests.fixtures.stack import Stack, new_email


@pytest.mark.parametrize("shared", [True, False], ids=["shared-store", "broken-per-replica-store"])
async def test_a_page_session_from_replica_a_works_on_replica_b(
    stack: Stack, tmp_path: Path, shared: bool
) -> None:
    settings_b = stack.settings.model_copy(update={"data_dir": tmp_path})
    url = stack.settings.resolved_database_url if shared else str(tmp_path / "quartermaster.sqlite")
    store_b = open_store(url, sealer=SecretBox(stack.keyring))
    services_b = build_services(settings_b, stack.keyring, stack.client, store=store_b)
    a = stack.api_url
    email = new_email()
    try:
        with serve_asgi(create_app(services_b, dev_routes=False)) as b:
            async with httpx.AsyncClient(follow_redirects=False) as http:
                form = await http.post(f"{a}/login", data={"email": email})
                assert form.status_code == 200
                match = re.search(r'name="login_id" value="([^"]+)"', form.text)
                assert match is not None
                login_id = match.group(1)
                (code,) = [m["code"] for m in stack.inbox(email) if m.get("login_id") == login_id]
                verified = await http.post(f"{a}/login/verify", data={"login_id": login_id, "code": code})
                assert verified.status_code == 303 and http.cookies.get(COOKIE)
                assert (await http.get(f"{a}/approvals")).status_code == 200
                on_b = await http.get(f"{b}/approvals")  # the same cookie, the other replica
                if not shared:
                    assert on_b.status_code == 303 and on_b.headers["location"] == "/login"
                    return
                assert on_b.status_code == 200 and email in on_b.text, on_b.text[:300]
                # logging out on B ends the session on A too
                assert (await http.post(f"{b}/logout")).status_code == 303
            # a browser that kept the cookie gets nowhere on A either
            async with httpx.AsyncClient(
                follow_redirects=False, cookies={COOKIE: verified.cookies[COOKIE]}
            ) as kept:
                again = await kept.get(f"{a}/approvals")
                assert again.status_code == 303 and again.headers["location"] == "/login"
    finally:
        store_b.close()
