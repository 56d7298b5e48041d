// What the principal does in these tests, through the API with their login (never the agent's client):
// read the dev inbox for an approval's one-time code and approve it.
import assert from "node:assert/strict";

export const API = process.env.QM_API_URL;
const HUMAN = process.env.QM_TEST_HUMAN_TOKEN;
const EMAIL = process.env.QM_TEST_EMAIL;

export function requireLiveStack() {
  assert.ok(API && process.env.QM_SESSION_TOKEN && HUMAN && EMAIL, "run through tests/typescript (pytest)");
}

export function uniqueId(prefix) {
  return `${prefix}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

async function codeFor(approvalId) {
  for (let i = 0; i < 100; i++) {
    const r = await fetch(`${API}/v1/dev/inbox?email=${encodeURIComponent(EMAIL)}`);
    const codes = (await r.json()).filter((m) => m.approval_id === approvalId).map((m) => m.code);
    if (codes.length) return codes.at(-1);
    await new Promise((ok) => setTimeout(ok, 100));
  }
  throw new Error(`no code for ${approvalId}`);
}

/** The human approves every approval in `waitingFor` ({approval_id, kind}). */
export async function humanApproves(waitingFor) {
  for (const w of waitingFor) {
    const r = await fetch(`${API}/v1/approvals/${encodeURIComponent(w.approval_id)}/decision`, {
      method: "POST",
      headers: { Authorization: `Bearer ${HUMAN}`, "Content-Type": "application/json" },
      body: JSON.stringify({ decision: "approve", code: await codeFor(w.approval_id) }),
    });
    assert.ok(r.ok, await r.text());
  }
}
