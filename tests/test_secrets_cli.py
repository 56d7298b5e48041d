"""`qm exec`, `qm env --pull`, `qm keys`: credentials reach the child only, files are 0600, no key bytes."""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import sys
from pathlib import Path

import pytest

from models.secret import Secret
from quartermaster.cli import main, secrets_verbs
from quartermaster.cli.secrets_verbs import run_with_credentials, write_dotenv
from quartermaster.keys import Keyring, load_keyring, write_key_file

CHILD_CHECK = (
    "import os, sys; "
    "ok = os.environ.get('API_TOKEN') == sys.argv[1] and os.environ.get('DB_URL') == sys.argv[2]; "
    "sys.exit(7 if ok else 1)"
)


def _creds() -> dict[str, Secret]:
    return {
        "api_token": Secret("tok" + secrets.token_hex(10)),
        "db-url": Secret("postgres://u:p@h/" + secrets.token_hex(4)),
    }


def test_exec_puts_credentials_in_the_child_only() -> None:
    creds = _creds()
    argv = [sys.executable, "-c", CHILD_CHECK, creds["api_token"].reveal(), creds["db-url"].reveal()]
    assert run_with_credentials(argv, creds) == 7
    assert "API_TOKEN" not in os.environ and "DB_URL" not in os.environ


def test_exec_does_not_pass_quartermasters_own_keys() -> None:
    parent = {"PATH": os.environ["PATH"], "QM_KEYS": "{}", "STRIPE_API_KEY": "sk_test_x", "KEEP": "1"}
    probe = "import os, sys; sys.exit(3 if 'QM_KEYS' in os.environ or 'STRIPE_API_KEY' in os.environ else 0)"
    assert run_with_credentials([sys.executable, "-c", probe], {}, base_env=parent) == 0
    keep = "import os, sys; sys.exit(0 if os.environ.get('KEEP') == '1' else 4)"
    assert run_with_credentials([sys.executable, "-c", keep], {}, base_env=parent) == 0


def test_exec_reports_the_childs_exit_status() -> None:
    assert run_with_credentials([sys.executable, "-c", "import sys; sys.exit(42)"], {}) == 42
    kill_self = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    assert run_with_credentials([sys.executable, "-c", kill_self], {}) == 128 + 15
    assert run_with_credentials(["definitely-not-a-command-qm"], {}) == 127


def test_exec_through_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    creds = _creds()

    async def fake_fetch(resource: str) -> dict[str, Secret]:
        assert resource == "res_123"
        return creds

    monkeypatch.setattr(secrets_verbs, "fetch_credentials", fake_fetch)
    code = main(
        ["exec", "res_123", "--", sys.executable, "-c", CHILD_CHECK, creds["api_token"].reveal(),
         creds["db-url"].reveal()]
    )  # fmt: skip
    assert code == 7


@pytest.mark.parametrize(
    "before, after",
    [(["--name", "orders-db"], []), ([], ["--name", "orders-db"]), ([], ["--name=orders-db"])],
    ids=["before-resource", "after-resource", "after-resource-equals"],
)
def test_exec_name_sets_the_prefix_wherever_it_is_given(
    monkeypatch: pytest.MonkeyPatch, before: list[str], after: list[str]
) -> None:
    creds = {"CLOUD_API_TOKEN": Secret("tok" + secrets.token_hex(8))}

    async def fake_fetch(resource: str) -> dict[str, Secret]:
        return creds

    monkeypatch.setattr(secrets_verbs, "fetch_credentials", fake_fetch)
    probe = "import os, sys; sys.exit(5 if os.environ.get('ORDERS_DB_API_TOKEN') == sys.argv[1] else 1)"
    argv = ["exec", *before, "res_123", *after, "--", sys.executable, "-c", probe]
    assert main([*argv, creds["CLOUD_API_TOKEN"].reveal()]) == 5


def test_env_pull_writes_0600_file_atomically_and_warns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = _creds()
    creds["quoted"] = Secret('a "b" $HOME\nc')

    async def fake_fetch(resource: str) -> dict[str, Secret]:
        return creds

    monkeypatch.setattr(secrets_verbs, "fetch_credentials", fake_fetch)
    target = tmp_path / ".env"
    target.write_text("KEEP_ME=1\nAPI_TOKEN=old\n")
    target.chmod(0o644)
    assert main(["env", "res_123", "--pull", "--file", str(target), "--json"]) == 0
    out, err = capsys.readouterr()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    lines = target.read_text().splitlines()
    assert lines[0] == "KEEP_ME=1"
    assert f"API_TOKEN={creds['api_token'].reveal()}" in lines
    assert "API_TOKEN=old" not in lines
    assert 'QUOTED="a \\"b\\" \\$HOME\\nc"' in lines
    assert "warning" in err and ".env files leak" in err
    assert json.loads(out) == {"file": str(target), "variables": ["API_TOKEN", "DB_URL", "QUOTED"]}
    assert creds["api_token"].reveal() not in out + err
    assert [p.name for p in tmp_path.iterdir()] == [".env"]  # no temp file left behind


def test_exec_refuses_credentials_that_would_hijack_the_child() -> None:
    for name in ("path", "LD_PRELOAD", "pythonpath", "qm_keys"):
        with pytest.raises(Exception, match="may not set"):
            run_with_credentials([sys.executable, "-c", "pass"], {name: Secret("/tmp/evil.so")})


def test_write_dotenv_refuses_colliding_names(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="API_TOKEN"):
        write_dotenv(tmp_path / ".env", {"api-token": Secret("a" * 9), "API_TOKEN": Secret("b" * 9)})
    assert not (tmp_path / ".env").exists()


def test_keys_show_and_rotate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("QM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("QM_KEYS", raising=False)
    monkeypatch.delenv("QM_KEYS_FILE", raising=False)
    keyring = Keyring.generate()
    write_key_file(tmp_path / "keys.json", keyring)
    write_key_file(tmp_path / "codec-keys.json", keyring.codec_only())

    assert main(["keys", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["payload_keys"] == ["p1"] and shown["seal_keys"] == ["s1"]
    assert main(["keys", "rotate"]) == 0
    rotated_text = capsys.readouterr().out
    assert "p2" in rotated_text and "s2" in rotated_text
    assert main(["keys", "show"]) == 0
    text = capsys.readouterr().out
    rotated = load_keyring(tmp_path / "keys.json")
    assert [k.kid for k in rotated.payload] == ["p1", "p2"]
    assert rotated.payload[0] == keyring.payload[0]
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    codec_copy = load_keyring(tmp_path / "codec-keys.json")
    assert [k.kid for k in codec_copy.payload] == ["p1", "p2"] and codec_copy.seal == ()
    for key in (*rotated.payload, *rotated.seal):
        assert base64.b64encode(key.key).decode() not in text + rotated_text + json.dumps(shown)

    monkeypatch.setenv("QM_KEYS", rotated.to_json())
    assert main(["keys", "rotate"]) == 2  # keys from the environment: nothing to rewrite
    assert "QM_KEYS" in capsys.readouterr().err
