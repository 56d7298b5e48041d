"""The data converter (`quartermaster.converter`): the same bytes as temporalio's pydantic converter,
and TypeAdapters shared across workflow runs only for types that are one object in every sandbox.

A type defined in a sandboxed workflow module is a new class in every run; sharing its adapter would
keep each run's sandbox alive. The broken variant (share every type) is run on a real worker and
shown to keep one adapter per run, where the real converter keeps none.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from models.approval import ApprovalRequest
from models.money import Money
from quartermaster import converter as converter_module
from quartermaster.converter import data_converter, shared_type
from quartermaster.workflow_runner import workflow_runner
from tests.fixtures.runner_probe import ProbeInput, RunnerProbeTyped, money
from worker import PASSTHROUGH

VALUES: list[tuple[Any, Any]] = [
    (Money(amount=1234, currency="usd"), Money),
    ([Money(amount=1), Money(amount=2)], list[Money]),
    ({"a": 1, "b": [True, None]}, dict[str, Any]),
    (None, type(None)),
    ("text", str),
    (datetime(2026, 12, 2, 5, 0, tzinfo=UTC), datetime),
    (
        ApprovalRequest(
            approval_id="provision-p-r1.terms", kind="terms", workflow_id="provision-p-r1",
            principal_id="p", summary="accept", requested_at=datetime(2026, 12, 2, tzinfo=UTC),
            expires_at=datetime(2026, 12, 3, tzinfo=UTC),
        ),
        ApprovalRequest,
    ),
]  # fmt: skip


@pytest.mark.parametrize(("value", "hint"), VALUES, ids=[type(v).__name__ for v, _ in VALUES])
def test_the_bytes_are_pydantic_converters_bytes(value: Any, hint: Any) -> None:
    ours = data_converter(None).payload_converter
    theirs = pydantic_data_converter.payload_converter
    (mine,) = ours.to_payloads([value])
    (reference,) = theirs.to_payloads([value])
    assert mine.SerializeToString(deterministic=True) == reference.SerializeToString(deterministic=True)
    assert ours.from_payloads([reference], [hint]) == theirs.from_payloads([reference], [hint]) == [value]


def test_which_types_are_shared() -> None:
    shared: tuple[Any, ...] = (
        Money,
        list[Money],
        ApprovalRequest | None,
        dict[str, Any],
        Literal["a"],
        int,
        Any,
    )
    for hint in shared:
        assert shared_type(hint), hint
    sandboxed: tuple[Any, ...] = (
        ProbeInput,
        list[ProbeInput],
        ProbeInput | None,
    )  # a sandboxed module's class
    for hint in sandboxed:
        assert not shared_type(hint), hint


async def _runs(client: Client, n: int) -> int:
    """n workflow runs whose input type is defined in their sandboxed module; how many adapters
    the process-wide cache gained."""
    before = converter_module._shared_adapter.cache_info().currsize
    queue = f"converter-probe-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[RunnerProbeTyped], activities=[money],
        workflow_runner=workflow_runner(PASSTHROUGH),
    ):  # fmt: skip
        for i in range(n):
            got = await client.execute_workflow(
                RunnerProbeTyped.run, ProbeInput(text="x" * (i + 1)), id=f"{queue}-{i}", task_queue=queue
            )
            assert got == f"{'x' * (i + 1)}:{i + 1}"
    return converter_module._shared_adapter.cache_info().currsize - before


async def test_runs_share_no_adapter_of_a_sandboxed_class(client: Client) -> None:
    # Money's adapter (the activity result) may be added once; ProbeInput's never
    assert await _runs(client, 5) <= 1


async def test_the_broken_variant_keeps_one_adapter_per_run(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(converter_module, "shared_type", lambda _hint: True)
    assert await _runs(client, 5) >= 5


def test_the_converter_is_the_clients() -> None:
    assert dataclasses.replace(data_converter(None)).payload_converter_class.__name__ == (
        "QuartermasterPayloadConverter"
    )
