"""The Quartermaster MCP server (caller side): tools an LLM agent calls, each a call to the API through
`QuartermasterClient` with the agent's own tokens. It never imports temporalio or server modules and
never holds a key.

Invariant: credentials never enter the model's context. Tools return resource references and the names
of the environment variables a credential fills; values reach a process only through `qm exec`/`qm run`.
There is no tool that reads `/v1/resources/{id}/credentials`.
"""

from quartermaster.mcp.server import SPEC_VERSION, build_server
from quartermaster.mcp.state import McpState

__all__ = ["SPEC_VERSION", "McpState", "build_server"]
