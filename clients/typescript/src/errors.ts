/** Typed errors of the API, built in one place from its error body `{"error": {"code", "message"}}`. */
import type { components } from "./schema.js";

/** Every stable code the API answers with (generated from the OpenAPI document). */
export type ErrorCode = components["schemas"]["ErrorCode"];

export class QuartermasterError extends Error {
  readonly code: ErrorCode;
  /** the HTTP status, or undefined when the API could not be reached */
  readonly status: number | undefined;

  constructor(code: ErrorCode, message: string, status?: number) {
    super(`${code}: ${message}`);
    this.name = "QuartermasterError";
    this.code = code;
    this.status = status;
  }
}

/** The error for a non-2xx answer: the API's code and message, or UNKNOWN_ERROR for anything else. */
export function errorFromResponse(response: Response, body: unknown): QuartermasterError {
  const err = (body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  if (err && typeof err.code === "string" && typeof err.message === "string") {
    return new QuartermasterError(err.code as ErrorCode, err.message, response.status);
  }
  return new QuartermasterError("UNKNOWN_ERROR", `HTTP ${response.status} from the API`, response.status);
}
