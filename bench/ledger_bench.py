"""Spend ledger throughput: reservations per second on one ledger and across 100 ledgers, and the
ratio to a no-op update sent the same way (update-with-start, same concurrency) in the same run. Both
carry an authority proof made as the spend activities make it, so the figures include signing and the
ledger's verification.

    python bench/ledger_bench.py            # starts its own dev server unless TEMPORAL_ADDRESS is set
    python bench/ledger_bench.py --quick    # a tiny smoke run

Not a test: it prints figures, it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import workflow
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.authority import ProofKind
from models.ledger import LedgerStart, ReserveOutcome, ReserveSpend
from models.money import Money
from quartermaster.crypto.authority import AuthoritySigner
from quartermaster.keys import NamedKey
from workflows import authority
from workflows.ledger import SpendLedgerWorkflow

#: this process's own authority key: it signs like the worker and the ledgers verify with it
_KEYS = (NamedKey("bench-a1", secrets.token_bytes(32)),)
SIGNER = AuthoritySigner(_KEYS)
#: per workflow: the server admits 10 in-flight updates, so both variants stay under that
PER_WORKFLOW_CONCURRENCY = 8


@workflow.defn(name="NoopEntity", sandboxed=False)
class NoopEntity:
    """The baseline: an entity whose update does nothing."""

    @workflow.run
    async def run(self, start: LedgerStart) -> None:
        await workflow.wait_condition(lambda: False, timeout=timedelta(days=1))

    @workflow.update(name="reserve")
    def reserve(self, req: ReserveSpend) -> ReserveOutcome:
        m = Money(amount=0)
        return ReserveOutcome(status="reserved", limit=m, committed=m, reserved=m, remaining=m)


@dataclass
class Figure:
    scenario: str
    workflow: str
    ops: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.ops / self.seconds


async def _drive(client: Client, task_queue: str, wf: str, ledgers: int, ops: int, tag: str) -> Figure:
    ids = [f"bench-{tag}-{uuid.uuid4().hex[:8]}-{i}" for i in range(ledgers)]
    per_ledger = ops // ledgers
    big = Money(amount=100_000_000)

    async def one(ledger_id: str, worker_no: int) -> None:
        start = SIGNER.signed(
            LedgerStart(ledger_id=ledger_id, kind="budget", limit=big),
            ProofKind.LEDGER_START,
            ledger_id,
            exclude=frozenset({"state"}),
        )
        for k in range(worker_no, per_ledger, PER_WORKFLOW_CONCURRENCY):
            op: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
                wf,
                start,
                id=ledger_id,
                task_queue=task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
            await client.execute_update_with_start_workflow(
                "reserve",
                SIGNER.signed(
                    ReserveSpend(purchase_id=f"p{k}", amount=Money(amount=1)),
                    ProofKind.LEDGER_RESERVE,
                    ledger_id,
                ),
                start_workflow_operation=op,
                result_type=ReserveOutcome,
            )

    lanes = min(PER_WORKFLOW_CONCURRENCY, per_ledger)
    began = time.perf_counter()
    await asyncio.gather(*(one(lid, w) for lid in ids for w in range(lanes)))
    seconds = time.perf_counter() - began
    for lid in ids:  # leave nothing running
        await client.get_workflow_handle(lid).terminate("benchmark done")
    return Figure(f"{ledgers} ledger(s)", wf, per_ledger * ledgers, seconds)


async def run(client: Client, *, quick: bool = False) -> list[Figure]:
    """Run every scenario against `client` with a worker of our own; returns the figures."""
    task_queue = f"bench-{uuid.uuid4().hex[:8]}"
    one_ops, many_ops = (40, 200) if quick else (1_000, 3_000)
    many = 10 if quick else 100
    figures: list[Figure] = []
    authority.add(_KEYS)  # beside whatever keys this process installed already (the test suite's)
    async with Worker(client, task_queue=task_queue, workflows=[SpendLedgerWorkflow, NoopEntity]):
        for wf in ("NoopEntity", "SpendLedger"):  # warm-up: first tasks pay for sandbox imports
            await _drive(client, task_queue, wf, 1, 8, "warm")
        for ledgers, ops in ((1, one_ops), (many, many_ops)):
            for wf in ("NoopEntity", "SpendLedger"):
                figures.append(await _drive(client, task_queue, wf, ledgers, ops, wf.lower()))
    return figures


#: the issue's goal: reservations at least this share of the no-op update rate on the same server
RESERVE_GOAL = 0.7


def table(figures: list[Figure]) -> str:
    head = f"{'scenario':<16}{'workflow':<14}{'ops':>7}{'seconds':>9}{'ops/s':>9}{'vs no-op':>10}"
    lines = [f"{head}{'goal':>10}{'met':>5}"]
    noop = {f.scenario: f.per_second for f in figures if f.workflow == "NoopEntity"}
    for f in figures:
        ratio = f.per_second / noop[f.scenario] if f.scenario in noop else float("nan")
        goal = f"{'>= ' + str(RESERVE_GOAL):>10}{('yes' if ratio >= RESERVE_GOAL else 'no'):>5}"
        lines.append(
            f"{f.scenario:<16}{f.workflow:<14}{f.ops:>7}{f.seconds:>9.2f}{f.per_second:>9.1f}{ratio:>10.2f}"
            + (goal if f.workflow == "SpendLedger" else "")
        )
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    args = parser.parse_args(argv)
    from quartermaster.codec import EncryptionCodec
    from quartermaster.converter import data_converter
    from quartermaster.keys import Keyring

    converter = data_converter(EncryptionCodec(Keyring.generate()))  # the production converter
    address = os.environ.get("TEMPORAL_ADDRESS")
    if address:
        client = await Client.connect(address, data_converter=converter)
        print(table(await run(client, quick=args.quick)))
        return 0
    from temporalio.testing import WorkflowEnvironment

    env = await WorkflowEnvironment.start_local(
        data_converter=converter,
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        dev_server_log_level="error",
        dev_server_extra_args=["--dynamic-config-value", "frontend.enableExecuteMultiOperation=true"],
    )
    async with env:
        print(table(await run(env.client, quick=args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
