// Fails when src/schema.ts is not what openapi-typescript makes of docs/api.openapi.json now:
// regenerate with `npm run generate` after regenerating the OpenAPI document.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dir = mkdtempSync(join(tmpdir(), "qm-schema-"));
try {
  const out = join(dir, "schema.ts");
  const cli = join(root, "node_modules", "openapi-typescript", "bin", "cli.js");
  execFileSync(process.execPath, [cli, join(root, "..", "..", "docs", "api.openapi.json"), "-o", out], {
    stdio: ["ignore", "ignore", "inherit"],
  });
  if (readFileSync(out, "utf8") !== readFileSync(join(root, "src", "schema.ts"), "utf8")) {
    console.error("src/schema.ts drifted from docs/api.openapi.json: run `npm run generate`");
    process.exit(1);
  }
  console.log("src/schema.ts matches docs/api.openapi.json");
} finally {
  rmSync(dir, { recursive: true, force: true });
}
