"""The one data converter every Temporal client uses: worker, CLI, tests and the Replayer.

pydantic JSON payloads, wrapped by the encryption codec (quartermaster.codec), with failure messages
and stack traces moved into encoded attributes so they are encrypted too.
"""

from __future__ import annotations

import dataclasses

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec


def data_converter(codec: PayloadCodec | None) -> DataConverter:
    """pydantic payloads + `codec` + encoded failure attributes. `codec=None` only in leak tests."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
