"""Typed errors of the API, built in one place from its error body: `code`, `status`, `message`."""

from __future__ import annotations

import httpx

from models.errors import ErrorCode, QuartermasterError, code_of


class ApiError(QuartermasterError):
    """A refusal or failure the API answered with (or could not answer: API_UNAVAILABLE)."""

    def __init__(
        self, code: ErrorCode, message: str, *, status: int | None = None, body: object = None
    ) -> None:
        super().__init__(code, message)
        self.status = status
        self.body = body


def error_from_response(resp: httpx.Response) -> ApiError:
    try:
        body = resp.json()
        err = body["error"]
        return ApiError(code_of(str(err["code"])), str(err["message"]), status=resp.status_code, body=body)
    except (ValueError, KeyError, TypeError):
        return ApiError(
            ErrorCode.UNKNOWN_ERROR, f"HTTP {resp.status_code} from the API", status=resp.status_code
        )
