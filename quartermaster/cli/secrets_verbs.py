"""Delivering credentials without leaking them, and managing the key file.

    qm exec RESOURCE -- COMMAND...      run COMMAND with the resource's credentials in ITS environment only
    qm env RESOURCE --pull [--file F]   write them to a .env (mode 0600, atomic), with a warning
    qm keys rotate                      append a new payload + seal key; old keys keep decrypting
    qm keys show                        key ids only, never key bytes

`exec` is the recommended path for agents: nothing is written to disk, and the parent's environment
(the agent's shell) never holds the values.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from models.errors import ErrorCode, QuartermasterError
from models.secret import Secret
from quartermaster.cli.output import add_common, emit

ENV_WARNING = (
    "warning: {path} now holds live credentials in plaintext. .env files leak: they get committed, "
    "copied into images and read by other tools. Prefer `qm exec {resource} -- COMMAND`, which keeps "
    "them out of files."
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_VALUE = re.compile(r"[A-Za-z0-9_\-./:+=@%,]*")
#: names a provider's credential may not take: they would change what the child runs or loads
RESERVED_ENV = frozenset(
    {"PATH", "HOME", "SHELL", "USER", "IFS", "ENV", "BASH_ENV", "PYTHONPATH", "NODE_OPTIONS"}
)
_RESERVED_PREFIXES = ("LD_", "DYLD_", "QM_", "TEMPORAL_")
#: Quartermaster's own secrets stay with `qm`: the child gets the resource's credentials only
NOT_INHERITED = (
    "QM_KEYS",
    "QM_CODEC_AUTH_TOKEN",
    "STRIPE_API_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "TEMPORAL_API_KEY",
    "QM_HUMAN_TOKEN",
    "QM_SESSION_TOKEN",
    "QM_IDENTITY_TOKEN",
    "QM_IDENTITY_TOKEN_FILE",
)


def env_names(creds: Mapping[str, Secret]) -> dict[str, Secret]:
    """Credential names as environment variable names: upper case, other characters become ``_``."""
    out: dict[str, Secret] = {}
    for name, value in creds.items():
        env_name = re.sub(r"[^A-Za-z0-9_]", "_", name).upper()
        if not _ENV_NAME.fullmatch(env_name):
            env_name = "_" + env_name
        if env_name in RESERVED_ENV or env_name.startswith(_RESERVED_PREFIXES):
            raise QuartermasterError(
                ErrorCode.INVALID_CONFIGURATION, f"a credential may not set the variable {env_name}"
            )
        if env_name in out:
            raise QuartermasterError(
                ErrorCode.INVALID_CONFIGURATION, f"two credentials map to the variable {env_name}"
            )
        out[env_name] = value
    return out


def run_with_credentials(
    command: Sequence[str], creds: Mapping[str, Secret], *, base_env: Mapping[str, str] | None = None
) -> int:
    """Run `command` with `creds` added to the CHILD's environment; returns the child's exit code.

    The values never enter this process's `os.environ`; Quartermaster's own secrets (`NOT_INHERITED`)
    are not passed on. A child killed by signal N gives 128 + N, like a shell.
    """
    if not command:
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, "give a command after `--`")
    env = {k: v for k, v in (os.environ if base_env is None else base_env).items() if k not in NOT_INHERITED}
    env.update({name: secret.reveal() for name, secret in env_names(creds).items()})
    try:
        proc = subprocess.Popen(list(command), env=env)
    except FileNotFoundError:
        print(f"qm exec: command not found: {command[0]}", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"qm exec: permission denied: {command[0]}", file=sys.stderr)
        return 126
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:
            # Ctrl-C reached the child too (same process group): wait for it to decide how to exit
            continue
    return 128 - code if code < 0 else code


def _dotenv_value(value: str) -> str:
    if _BARE_VALUE.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("\n", "\\n")
    return f'"{escaped}"'


def write_dotenv(path: Path, creds: Mapping[str, Secret]) -> list[str]:
    """Write `creds` into the .env at `path`: created 0600, replaced atomically, other lines kept.

    Returns the variable names written (never the values).
    """
    named = env_names(creds)
    kept: list[str] = []
    if path.exists():
        for line in path.read_text().splitlines():
            key = line.removeprefix("export ").split("=", 1)[0].strip()
            if key not in named:
                kept.append(line)
    lines = kept + [f"{name}={_dotenv_value(secret.reveal())}" for name, secret in named.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600 from the first byte; os.replace makes the switch atomic
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return list(named)


async def fetch_credentials(resource: str) -> dict[str, Secret]:
    """The resource's current credentials, from the API with the caller's own tokens."""
    from quartermaster.client import QuartermasterClient

    async with QuartermasterClient.from_env() as qm:
        values = await qm.resources.credentials(resource)
    return {name: Secret(value) for name, value in values.items()}


# -- verbs ------------------------------------------------------------------------------------------


def run_exec(args: argparse.Namespace) -> int:
    # synchronous on purpose: the child runs outside any event loop, so Ctrl-C cannot cancel the wait
    command = list(args.command)
    # `qm exec RES --name P -- CMD`: options after RESOURCE land in the remainder; take ours out
    while command[:1] and (command[0] == "--name" or command[0].startswith("--name=")):
        if command[0] == "--name":
            if len(command) < 2:
                raise QuartermasterError(ErrorCode.INVALID_REQUEST, "--name needs a prefix, e.g. ORDERS_DB")
            args.name, command = command[1], command[2:]
        else:
            args.name, command = command[0].partition("=")[2], command[1:]
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, "usage: qm exec RESOURCE -- COMMAND [ARGS...]")
    creds = asyncio.run(fetch_credentials(args.resource))
    if args.name:
        prefix = re.sub(r"[^A-Za-z0-9_]", "_", args.name).upper().rstrip("_") + "_"
        creds = {prefix + re.sub(r"^[A-Z0-9]+_", "", name.upper()): value for name, value in creds.items()}
    return run_with_credentials(command, creds)


async def run_env(args: argparse.Namespace) -> int:
    if not args.pull:
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, "use `qm env RESOURCE --pull [--file .env]`")
    creds = await fetch_credentials(args.resource)
    path = Path(args.file)
    names = write_dotenv(path, creds)
    print(ENV_WARNING.format(path=path, resource=args.resource), file=sys.stderr)
    emit(args, {"file": str(path), "variables": names}, f"wrote {', '.join(names) or 'nothing'} to {path}")
    return 0


def _key_file() -> Path:
    from quartermaster.config import Settings

    if os.environ.get("QM_KEYS"):
        raise QuartermasterError(
            ErrorCode.INVALID_CONFIGURATION,
            "keys come from QM_KEYS; rotate by appending keys in the secret store that sets it",
        )
    return Settings.from_env().resolved_keys_file


def rotate_key_file(path: Path) -> dict[str, str]:
    """Append a new payload and seal key to the key file (and its codec-only copy, when present)."""
    from quartermaster.keys import load_keyring, write_key_file

    if not path.exists():
        raise QuartermasterError(ErrorCode.NOT_FOUND, f"no key file at {path}")
    rotated = load_keyring(path).rotated()
    write_key_file(path, rotated)
    codec_copy = path.parent / "codec-keys.json"
    if codec_copy.exists():
        write_key_file(codec_copy, rotated.codec_only())
    return {"payload": rotated.payload[-1].kid, "seal": rotated.seal[-1].kid}


def describe_key_file(path: Path) -> dict[str, object]:
    """Key ids and which ones encrypt; never key bytes."""
    from quartermaster.keys import load_keyring

    keyring = load_keyring(path)
    payload = [k.kid for k in keyring.payload]
    seal = [k.kid for k in keyring.seal]
    return {
        "file": str(path),
        "payload_keys": payload,
        "seal_keys": seal,
        "encrypting": {"payload": payload[-1] if payload else None, "seal": seal[-1] if seal else None},
        "principal_key": keyring.principal is not None,
    }


def _describe_text(info: dict[str, object]) -> str:
    def kids(name: str) -> str:
        value = info[name]
        return ", ".join(value) if isinstance(value, list) else "-"

    return (
        f"key file   {info['file']}\n"
        f"payload    {kids('payload_keys')}  (newest encrypts)\n"
        f"seal       {kids('seal_keys')}  (newest encrypts)\n"
        f"principal  {'present' if info['principal_key'] else 'absent'}"
    )


def run_keys(args: argparse.Namespace) -> int:
    if args.keys_verb == "rotate":
        path = _key_file()
        new = rotate_key_file(path)
        emit(
            args,
            {"file": str(path), "new": new},
            f"rotated {path}: new payload key {new['payload']}, new seal key {new['seal']}; "
            "older keys still decrypt. Restart the worker and the codec server, and copy the file to "
            "every process that holds it.",
        )
        return 0
    info = describe_key_file(Path(args.keys_file) if args.keys_file else _key_file())
    emit(args, info, _describe_text(info))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exec`, `env` and `keys` to the `qm` parser."""
    p = sub.add_parser("exec", help="run a command with a resource's credentials in its environment only")
    p.add_argument("resource", help="the resource id")
    p.add_argument(
        "--name", help="the variables' prefix instead of the provider's (e.g. ORDERS_DB: ORDERS_DB_URL)"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p.set_defaults(handler=run_exec)

    p = sub.add_parser("env", help="write a resource's credentials to a .env file (mode 0600)")
    p.add_argument("resource", help="the resource id")
    p.add_argument("--pull", action="store_true", help="fetch the current credentials into the file")
    p.add_argument("--file", default=".env", help="the file to write (default .env)")
    add_common(p)
    p.set_defaults(handler=run_env)

    p = sub.add_parser("keys", help="show or rotate the payload and seal keys")
    keys_sub = p.add_subparsers(dest="keys_verb", required=True, metavar="rotate|show")
    rot = keys_sub.add_parser("rotate", help="append a new payload and seal key (old ones keep decrypting)")
    add_common(rot)
    show = keys_sub.add_parser("show", help="key ids only, never key bytes")
    show.add_argument("--keys-file", default=None, help="default: QM_KEYS_FILE or <data dir>/keys.json")
    add_common(show)
    p.set_defaults(handler=run_keys)
