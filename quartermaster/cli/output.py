"""How every verb prints: a table/line for people, one JSON document for agents (`--json`)."""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel

from models.errors import STRIPE_PROJECTS_ALIASES, ErrorCode, exit_code
from models.money import MAX_MINOR_UNITS, Money


def usd(text: str) -> Money:
    """An argparse type: a USD amount in whole cents (`12.50`), 0 to 1,000,000, parsed exactly."""
    try:
        cents = Decimal(text.strip()) * 100
    except InvalidOperation:
        raise argparse.ArgumentTypeError("an amount in USD, e.g. 20 or 12.50") from None
    if not cents.is_finite() or cents != cents.to_integral_value() or not 0 <= cents <= MAX_MINOR_UNITS:
        raise argparse.ArgumentTypeError("a USD amount in whole cents, from 0 to 1,000,000")
    return Money(amount=int(cents), currency="usd")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output for agents")


def to_jsonable(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list):
        return [to_jsonable(d) for d in data]
    if isinstance(data, dict):
        return {k: to_jsonable(v) for k, v in data.items()}
    return data


def emit(args: argparse.Namespace, data: Any, text: str | None = None) -> None:
    """Print `data` as JSON with --json, else `text` (or a JSON rendering when no text is given)."""
    if getattr(args, "json", False) or text is None:
        print(json.dumps(to_jsonable(data), indent=None if getattr(args, "json", False) else 2, default=str))
    else:
        print(text)


def error_object(code: ErrorCode, message: str) -> dict[str, str]:
    """The error as agents read it; `stripe_projects_code` when Stripe Projects names it too."""
    out = {"code": str(code), "message": message}
    if code in STRIPE_PROJECTS_ALIASES:
        out["stripe_projects_code"] = STRIPE_PROJECTS_ALIASES[code]
    return out


def report_error(args: argparse.Namespace, code: ErrorCode, message: str) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": error_object(code, message)}))
    else:
        print(f"{code}: {message}", file=sys.stderr)
    return exit_code(code)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)
