"""The one data converter every Temporal client uses: worker, CLI, tests and the Replayer.

pydantic JSON payloads, wrapped by the encryption codec (quartermaster.codec), with failure messages
and stack traces moved into encoded attributes so they are encrypted too.

The JSON payloads are exactly those of `temporalio.contrib.pydantic` (same encoding, same bytes).
One thing differs: the SDK builds a new payload converter for every workflow run, and pydantic's
converter keeps its `TypeAdapter`s in a cache of its own, so every new run rebuilt an adapter for
every type it decoded (CPU, and about 11 KiB per waiting request: docs/performance.md). Here the
adapters of types that are the same object in every workflow sandbox (the passthrough `models`
package, builtins, and generics of those) live in one process-wide cache. A type defined in a
sandboxed module is a new class in every run, so it keeps the per-run cache: sharing it would keep
every run's sandbox alive.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import TypeAdapter
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter, pydantic_data_converter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
    PayloadCodec,
)

#: top-level modules whose classes are one object per process, in and out of the sandbox
SHARED_TYPE_MODULES = frozenset({"builtins", "typing", "collections", "models", "pydantic", "datetime"})

#: one TypeAdapter per shared type hint, for every workflow run and activity of the process
_shared_adapter = functools.lru_cache(maxsize=1024)(TypeAdapter)


def shared_type(hint: Any) -> bool:
    """Is `hint` the same object in every workflow run (so its adapter may be shared)?"""
    if hint is Any or hint is None or hint is type(None):
        return True
    origin = get_origin(hint)
    if origin is not None:
        args_shared = all(
            shared_type(a) or isinstance(a, str | int | bool | enum.Enum) for a in get_args(hint)
        )
        return args_shared and (origin in (Union, UnionType, Literal) or shared_type(origin))
    module = getattr(hint, "__module__", None)
    return isinstance(hint, type) and isinstance(module, str) and module.split(".")[0] in SHARED_TYPE_MODULES


class SharedAdaptersJSONConverter(PydanticJSONPlainPayloadConverter):
    """pydantic's JSON converter, decoding shared types through the process-wide adapter cache."""

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        hint = type_hint if type_hint is not None else Any
        if shared_type(hint):
            try:
                adapter = _shared_adapter(hint)
            except TypeError:  # unhashable after all: pydantic's own path
                return super().from_payload(payload, type_hint)
            return adapter.validate_json(payload.data)
        return super().from_payload(payload, type_hint)


class QuartermasterPayloadConverter(CompositePayloadConverter):
    """The default converters, with JSON handled by `SharedAdaptersJSONConverter`."""

    def __init__(self) -> None:
        json_converter = SharedAdaptersJSONConverter()
        super().__init__(
            *(
                json_converter if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


def data_converter(codec: PayloadCodec | None) -> DataConverter:
    """pydantic payloads + `codec` + encoded failure attributes. `codec=None` only in leak tests."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_converter_class=QuartermasterPayloadConverter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
