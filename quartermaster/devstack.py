"""`qm dev`: the whole local stack in the foreground, every part a child process on loopback.

Order: Temporal dev server (SQLite under the data dir, custom search attributes, UI wired to the codec
server), local Stripe, the three provider simulators, the codec server, the gateway (JWKS, OAuth
callback, Stripe webhooks), the worker. Ctrl-C (or SIGTERM) stops them in reverse order; children also
get SIGKILL from the kernel if `qm dev` itself dies, so nothing is left behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from quartermaster.config import DEV_PORTS
from quartermaster.keys import load_keyring, write_key_file
from workflows.search_attributes import ALL as SEARCH_ATTRIBUTES

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


class PortInUseError(Exception):
    pass


@dataclass
class Component:
    name: str
    argv: list[str]
    port: int | None
    url: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def ports(offset: int = 0) -> dict[str, int]:
    """The stack's ports moved by `offset`; refused when they would collide with a default stack's."""
    moved = {k: v + offset for k, v in DEV_PORTS.items()}
    if offset and set(moved.values()) & set(DEV_PORTS.values()):
        raise PortInUseError(
            f"--port-offset {offset} would put a port on one of the default stack's "
            f"({sorted(set(moved.values()) & set(DEV_PORTS.values()))}); use e.g. 100 or 200"
        )
    if not all(0 < v < 65536 for v in moved.values()):
        raise PortInUseError(f"--port-offset {offset} moves ports out of range")
    return moved


def check_ports(p: dict[str, int]) -> None:
    taken = []
    for name, port in p.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                taken.append(f"{port} ({name})")
    if taken:
        raise PortInUseError(
            "port(s) already in use: " + ", ".join(taken) + "; is another `qm dev` running? "
            "Stop it, or run `qm dev --port-offset 100`."
        )


def child_env(data_dir: Path, p: dict[str, int]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        QM_DEV="1",
        QM_DATA_DIR=str(data_dir),
        TEMPORAL_ADDRESS=f"127.0.0.1:{p['temporal']}",
        QM_PUBLIC_URL=f"http://127.0.0.1:{p['gateway']}",
        QM_STRIPE_BASE_URL=f"http://127.0.0.1:{p['stripe']}",
        QM_PROVIDERS=",".join(f"{n}=http://127.0.0.1:{p[n]}" for n in ("cloud", "db", "mail")),
        QM_CODEC_CORS_ORIGIN=f"http://localhost:{p['ui']}",
        PYTHONUNBUFFERED="1",
    )
    return env


def components(data_dir: Path, p: dict[str, int]) -> list[Component]:
    py = sys.executable
    temporal = [
        str(BIN / "temporal"),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(p["temporal"]),
        "--ui-port",
        str(p["ui"]),
        "--db-filename",
        str(data_dir / "temporal.sqlite"),
        "--ui-codec-endpoint",
        f"http://127.0.0.1:{p['codec']}",
        "--log-level",
        "error",
        "--ui-disable-news-fetch",
    ]
    for key in SEARCH_ATTRIBUTES:
        temporal += ["--search-attribute", f"{key.name}=Keyword"]
    sims = [
        Component(
            name,
            [py, "-m", "simulators.provider", "--provider", name, "--port", str(p[name])],
            p[name],
            f"http://127.0.0.1:{p[name]}/catalog",
        )
        for name in ("cloud", "db", "mail")
    ]
    return [
        Component("temporal", temporal, p["temporal"], f"http://localhost:{p['ui']} (UI)"),
        Component(
            "stripe",
            [py, "-m", "simulators.stripe", "--port", str(p["stripe"])],
            p["stripe"],
            f"http://127.0.0.1:{p['stripe']}",
        ),
        *sims,
        Component(
            "codec",
            [py, "-m", "quartermaster.codec_server", "--port", str(p["codec"])],
            p["codec"],
            f"http://127.0.0.1:{p['codec']}",
        ),
        Component(
            "api",
            [py, "-m", "quartermaster.api", "--port", str(p["gateway"])],
            p["gateway"],
            f"http://127.0.0.1:{p['gateway']} (the Quartermaster API; OAuth callback, JWKS, webhooks)",
        ),
        Component(
            "worker", [py, str(ROOT / "worker.py")], None, f"task queue quartermaster @ :{p['temporal']}"
        ),
    ]


def _die_with_parent() -> None:
    """Linux: the kernel kills this child if `qm dev` dies, even by SIGKILL."""
    os.setsid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pump(name: str, stream: object) -> None:
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        sys.stdout.write(f"[{name:8}] {raw.decode(errors='replace')}")
        sys.stdout.flush()


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def stop(started: list[Component], grace: float = 10) -> None:
    for comp in reversed(started):
        if comp.proc and comp.proc.poll() is None:
            os.killpg(comp.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for comp in reversed(started):
        if comp.proc is None:
            continue
        try:
            comp.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(comp.proc.pid, signal.SIGKILL)
            comp.proc.wait()


def run(data_dir: Path, offset: int = 0) -> int:
    """Start everything, print what runs where, block until Ctrl-C or a child dies."""
    p = ports(offset)
    check_ports(p)
    data_dir.mkdir(parents=True, exist_ok=True)
    keys_file = data_dir / "keys.json"
    keyring = load_keyring(keys_file, create=True)
    write_key_file(data_dir / "codec-keys.json", keyring.codec_only())
    env = child_env(data_dir, p)
    started: list[Component] = []
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for comp in components(data_dir, p):
            comp.proc = subprocess.Popen(
                comp.argv,
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
            started.append(comp)
            threading.Thread(target=_pump, args=(comp.name, comp.proc.stdout), daemon=True).start()
            if comp.port is not None and not _wait_port(comp.port, comp.proc):
                print(
                    f"qm dev: {comp.name} did not start (exit code {comp.proc.poll()}); see its output above"
                )
                return 1
            if stopping.is_set():
                return 130
        print(f"\nQuartermaster dev stack is up (data in {data_dir}):")
        for comp in started:
            print(f"  {comp.name:8} {comp.url}")
        api = f"http://127.0.0.1:{p['gateway']}"
        print(
            "\nIn another shell (any directory), all a caller needs is the API's address:\n"
            f"  . {ROOT / '.venv' / 'bin' / 'activate'}\n"
            f"  export QM_API_URL={api}\n"
            "  qm login --email you@example.com   # the code arrives in: qm inbox --email you@example.com\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stopping.wait(0.5):
            for comp in started:
                if comp.proc and comp.proc.poll() is not None:
                    print(f"qm dev: {comp.name} exited with code {comp.proc.returncode}; stopping")
                    return 1
        return 0
    finally:
        print("qm dev: stopping ...", flush=True)
        stop(started)
        print("qm dev: stopped", flush=True)
