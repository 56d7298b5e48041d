"""Workflow inputs are validated inside the workflow, not by the data converter.

A payload the converter cannot turn into the input model fails the workflow task, and Temporal
retries that task forever. The workflows therefore take the raw JSON value and validate it here, so
an invalid start ends cleanly with `INVALID_REQUEST`. Messages name fields, never values (a value
may be a secret, or ten thousand characters long).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
MAX_FIELDS_NAMED = 5


def parse_input(model: type[M], raw: Any) -> M | str:
    """`raw` as `model` (validated exactly as the data converter would), or what is wrong with it."""
    if isinstance(raw, model):
        return raw
    try:
        # the converter validates JSON: do the same, so strict ints and secrets behave identically
        return model.model_validate_json(json.dumps(raw))
    except (TypeError, ValueError) as exc:
        if not isinstance(exc, ValidationError):
            return "the input is not JSON"
        names = sorted({".".join(str(p)[:40] for p in e["loc"]) or "input" for e in exc.errors()})
        more = f" and {len(names) - MAX_FIELDS_NAMED} more" if len(names) > MAX_FIELDS_NAMED else ""
        return "invalid field(s): " + ", ".join(names[:MAX_FIELDS_NAMED]) + more


def raw_str(raw: Any, key: str, limit: int = 100) -> str:
    """A short string field of a raw input for the result (empty when absent or not a string)."""
    value = raw.get(key) if isinstance(raw, dict) else None
    return value[:limit] if isinstance(value, str) else ""
