"""The workflows `bench.server_ops` calls: an entity that answers every kind of message and does
nothing else, and a workflow that returns at once. In a module of their own, so the sandbox can
import it for every run (as it imports the floor's)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow


@workflow.defn(name="BenchOpsEntity")
class OpsEntity:
    def __init__(self) -> None:
        self.n = 0

    @workflow.update(name="bump")
    def bump(self, x: int) -> int:
        self.n += x
        return self.n

    @workflow.signal(name="poke")
    def poke(self, x: int) -> None:
        self.n += x

    @workflow.query(name="view")
    def view(self) -> int:
        return self.n

    @workflow.run
    async def run(self, x: int) -> None:
        await workflow.wait_condition(lambda: False, timeout=timedelta(days=30))


@workflow.defn(name="BenchOpsReturn")
class OpsReturn:
    @workflow.run
    async def run(self, x: int) -> int:
        return x
