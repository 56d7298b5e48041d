/** What `qm run` injects into an agent's process (and nothing else of Quartermaster's). */
import { readFileSync } from "node:fs";

export const ENV_API_URL = "QM_API_URL";
export const ENV_SESSION = "QM_SESSION_TOKEN";
export const ENV_IDENTITY = "QM_IDENTITY_TOKEN";
export const ENV_IDENTITY_FILE = "QM_IDENTITY_TOKEN_FILE";
export const DEFAULT_API_URL = "http://127.0.0.1:8700";

type Env = Record<string, string | undefined>;

/** The freshest identity token: the file `qm run` refreshes, else the variable set at start. */
export function identityTokenFromEnv(env: Env = process.env): string | undefined {
  const path = env[ENV_IDENTITY_FILE];
  if (path) {
    try {
      const text = readFileSync(path, "utf8").trim();
      if (text) return text;
    } catch {
      // the file is gone (the run ended): fall back to the variable
    }
  }
  return env[ENV_IDENTITY] || undefined;
}
