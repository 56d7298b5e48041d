// The client against the live API, holding only what `qm run` injects (QM_API_URL, QM_SESSION_TOKEN,
// QM_IDENTITY_TOKEN[_FILE]).
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, test } from "node:test";

import { QuartermasterClient, QuartermasterError } from "../dist/index.js";
import { API, humanApproves, requireLiveStack, uniqueId } from "./helpers.mjs";

before(requireLiveStack);

test("fromEnv acts as the agent qm run started", async () => {
  const qm = QuartermasterClient.fromEnv();
  assert.equal(qm.role, "agent");
  const me = await qm.whoami();
  assert.equal(me.kind, "agent");
  assert.equal(me.agent, "planner");
});

test("fromEnv prefers the identity file qm run refreshes", async () => {
  const dir = mkdtempSync(join(tmpdir(), "qm-ts-"));
  const file = join(dir, "identity.jwt");
  writeFileSync(file, process.env.QM_IDENTITY_TOKEN ?? "", { mode: 0o600 });
  const env = { ...process.env, QM_IDENTITY_TOKEN: "stale.token.value", QM_IDENTITY_TOKEN_FILE: file };
  assert.equal((await QuartermasterClient.fromEnv(env).whoami()).kind, "agent");
  const stale = { ...process.env, QM_IDENTITY_TOKEN: "stale.token.value", QM_IDENTITY_TOKEN_FILE: join(dir, "gone") };
  await assert.rejects(QuartermasterClient.fromEnv(stale).whoami(), { code: "UNAUTHENTICATED", status: 401 });
});

test("catalog and quotes", async () => {
  const qm = QuartermasterClient.fromEnv();
  const catalogs = await qm.catalog.list();
  const services = catalogs.flatMap((c) => c.services);
  const workers = services.find((s) => s.service_id === "cloud/workers");
  assert.ok(workers && workers.llm_context, "cloud/workers with its llm_context");
  const quote = await qm.quotes.create({ service_id: "db/postgres:pro" });
  assert.equal(quote.service.service_id, "db/postgres:pro");
  assert.ok((quote.due_now?.amount ?? quote.recurring?.amount ?? 0) > 0);
});

test("typed errors carry the API's stable code and status", async () => {
  const qm = QuartermasterClient.fromEnv();
  await assert.rejects(qm.provisions.get("no-such-request"), (err) => {
    assert.ok(err instanceof QuartermasterError);
    assert.equal(err.code, "NOT_FOUND");
    assert.equal(err.status, 404);
    return true;
  });
  await assert.rejects(qm.quotes.create({ service_id: "nope/x" }), (err) =>
    ["UNKNOWN_PROVIDER", "UNKNOWN_SERVICE"].includes(err.code),
  );
  const forged = new QuartermasterClient({ baseUrl: API, sessionToken: "a.b.c", identityToken: "d.e.f" });
  await assert.rejects(forged.resources.list(), { code: "UNAUTHENTICATED", status: 401 });
  const away = new QuartermasterClient({ baseUrl: "http://127.0.0.1:9" });
  await assert.rejects(away.catalog.list(), { code: "API_UNAVAILABLE", status: undefined });
});

test("provision a free service, follow it, rotate and remove it", async () => {
  const qm = QuartermasterClient.fromEnv();
  const requestId = uniqueId("ts-free");
  let view = await qm.provisions.create({ request_id: requestId, service_id: "cloud/workers", name: "ts1" }, { wait: 20 });
  if (view.state === "waiting_for_human") {
    assert.equal(view.waiting_for?.[0]?.kind, "terms");
    await humanApproves(view.waiting_for ?? []);
  }
  view = await qm.provisions.wait(requestId, { timeoutMs: 60_000 });
  assert.equal(view.state, "completed", JSON.stringify(view));
  const resourceId = view.resource_id;
  assert.ok(resourceId && view.credential?.names.length);
  // the same request id returns the same request
  const again = await qm.provisions.create({ request_id: requestId, service_id: "cloud/workers", name: "ts1" });
  assert.equal(again.resource_id, resourceId);
  const listed = await qm.resources.list();
  assert.ok(listed.some((r) => r.resource_id === resourceId && r.credential_names.length));
  const rotated = await qm.resources.rotate(resourceId);
  assert.equal(rotated.outcome, "completed");
  assert.notEqual(rotated.credential?.credential_id, view.credential?.credential_id);
  const removed = await qm.resources.remove(resourceId);
  assert.equal(removed.outcome, "completed");
  assert.ok(!(await qm.resources.list()).some((r) => r.resource_id === resourceId));
});
