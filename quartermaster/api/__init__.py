"""The Quartermaster API: the trust boundary between callers (agents, humans, the CLI, MCP, the
TypeScript SDK) and Temporal.

Server side. It is the only caller-side client of Temporal and holds the server-side key material;
every route declares who may call it (`quartermaster.api.deps`), the principal always comes from a
verified token, and refusals have stable codes (`quartermaster.api.errors`).
"""
