"""`Secret`: a string whose printed forms are redacted.

In JSON (and so in Temporal payloads) a secret is written as ``{"__qm_secret__": "<value>"}``. The
payload codec seals that value with a key the UI codec server never holds, so operators see a
redaction marker and the plaintext exists only inside the worker and the agent's own client.
"""

from __future__ import annotations

from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

SECRET_MARKER = "__qm_secret__"  # noqa: S105 - a JSON key, not a password
#: the redaction marker (not a password)
REDACTED = "***"


class Secret:
    """A secret value. `str()`, `repr()` and f-strings show ``***``; call `reveal()` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value

    def reveal(self) -> str:
        """The plaintext. Call it only at the point of use (an HTTP header, a child's environment)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:
        raise TypeError("Secret is not picklable")

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: Any) -> Secret:
            if isinstance(value, Secret):
                return value
            if isinstance(value, str):
                return cls(value)
            if isinstance(value, dict) and isinstance(value.get(SECRET_MARKER), str):
                return cls(value[SECRET_MARKER])
            raise ValueError("expected a secret string")

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda s: {SECRET_MARKER: s.reveal()}, when_used="json"
            ),
            json_schema_input_schema=core_schema.str_schema(),
        )
