// The TypeScript MCP SDK's client over the API's streamable HTTP transport (/mcp), authenticated with
// the agent's tokens: catalog -> provision a free service -> status -> resources.
import assert from "node:assert/strict";
import { before, test } from "node:test";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

import { API, humanApproves, requireLiveStack, uniqueId } from "./helpers.mjs";

before(requireLiveStack);

function agentHeaders() {
  return {
    Authorization: `Bearer ${process.env.QM_SESSION_TOKEN}`,
    "X-QM-Identity": process.env.QM_IDENTITY_TOKEN ?? "",
  };
}

async function connect(headers) {
  const client = new Client({ name: "qm-ts-test", version: "0.0.0" });
  await client.connect(new StreamableHTTPClientTransport(new URL(`${API}/mcp`), { requestInit: { headers } }));
  return client;
}

async function call(client, name, args = {}) {
  const result = await client.callTool({ name, arguments: args });
  assert.ok(!result.isError, `${name}: ${JSON.stringify(result.content)}`);
  return result.structuredContent;
}

test("without the agent's tokens the endpoint answers 401 with resource metadata", async () => {
  const r = await fetch(`${API}/mcp`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json, text/event-stream" },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list" }),
  });
  assert.equal(r.status, 401);
  assert.match(r.headers.get("www-authenticate") ?? "", /resource_metadata=".*\/\.well-known\/oauth-protected-resource"/);
  await assert.rejects(connect({}));
});

test("catalog, provision a free service, status, resources", async () => {
  const client = await connect(agentHeaders());
  try {
    // the handshake era: this SDK's newest revision, which the Python server also speaks (docs/mcp.md)
    assert.equal(client.transport?.protocolVersion, "2025-11-25");
    const { tools } = await client.listTools();
    assert.deepEqual(
      tools.map((t) => t.name).sort(),
      ["catalog", "delegate", "provision", "quote", "remove", "resources", "rotate", "status"],
    );
    assert.ok(tools.every((t) => t.annotations && typeof t.annotations.readOnlyHint === "boolean"));
    const catalog = await call(client, "catalog");
    assert.ok(catalog.providers.some((p) => p.services.some((s) => s.service_id === "cloud/workers")));
    const requestId = uniqueId("ts-mcp");
    let view = await call(client, "provision", { request_id: requestId, service_id: "cloud/workers", name: "tsm" });
    for (let i = 0; i < 60 && view.state !== "completed"; i++) {
      if (view.state === "waiting_for_human") await humanApproves(view.waiting_for);
      if (["undone", "rejected"].includes(view.state)) break;
      view = await call(client, "status", { request_id: requestId, wait_seconds: 5 });
    }
    assert.equal(view.state, "completed", JSON.stringify(view));
    assert.match(view.next_step, /qm exec/);
    const listed = await call(client, "resources");
    assert.ok(listed.resources.some((r) => r.resource_id === view.resource_id));
    // another principal's or an unknown id is a tool error with the API's code
    const missing = await client.callTool({ name: "status", arguments: { request_id: "no-such-request" } });
    assert.ok(missing.isError && JSON.stringify(missing.content).includes("NOT_FOUND"));
  } finally {
    await client.close();
  }
});
