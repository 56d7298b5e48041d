"""`qm mcp`: the MCP server on stdio, for an agent host started under `qm run` (it authenticates with the
tokens `qm run` injected: QM_API_URL, QM_SESSION_TOKEN, QM_IDENTITY_TOKEN[_FILE]). See docs/mcp.md."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("mcp", help="serve the Quartermaster MCP tools on stdio (run it under qm run)")
    p.set_defaults(handler=serve_stdio)


async def serve_stdio(args: argparse.Namespace) -> int:
    from quartermaster.mcp.server import run_stdio

    await run_stdio()
    return 0
