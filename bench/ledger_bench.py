"""Spend ledger throughput: reservations per second on one ledger and across 100 ledgers, and the
ratio to a no-op update sent the same way (update-with-start, same concurrency) in the same run. Both
carry an authority proof made as the spend activities make it, so the figures include signing and the
ledger's verification. The same for a principal's spend books (`SpendBooks`, one layer per
reservation), and a paid purchase's three layers: three ledgers one after another (the layout before
the books) against one `reserve_all` on the books.

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
from pathlib import Path
from typing import Any

from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.noop_entity import NoopEntity, UnsandboxedNoopEntity
from models.authority import ProofKind
from models.books import BookReserve, BooksReserve, BooksReserveOutcome, BooksStart, books_workflow_id
from models.ledger import LedgerStart, ReserveOutcome, ReserveSpend
from models.money import Money
from quartermaster.crypto.authority import AuthoritySigner
from quartermaster.keys import NamedKey
from quartermaster.workflow_runner import workflow_runner
from worker import PASSTHROUGH
from workflows import authority
from workflows.books import SpendBooksWorkflow
from workflows.ledger import SpendLedgerWorkflow

#: this process's own authority key: it signs like the worker and the ledgers verify with it
_KEYS = (NamedKey("bench-a1", secrets.token_bytes(32)),)
SIGNER = AuthoritySigner(_KEYS)
#: per workflow: the server admits 10 in-flight updates, so both variants stay under that
PER_WORKFLOW_CONCURRENCY = 8


BIG = Money(amount=100_000_000)


def _ledger_start(ledger_id: str) -> LedgerStart:
    return LedgerStart(ledger_id=ledger_id, kind="budget", limit=BIG)


async def _reserve_on_ledger(client: Client, task_queue: str, wf: str, ledger_id: str, purchase: str) -> None:
    """One reservation as the spend activities send it to a ledger: a signed update-with-start."""
    start = SIGNER.signed(
        _ledger_start(ledger_id), ProofKind.LEDGER_START, ledger_id, exclude=frozenset({"state"})
    )
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
            ReserveSpend(purchase_id=purchase, amount=Money(amount=1)), ProofKind.LEDGER_RESERVE, ledger_id
        ),
        start_workflow_operation=op,
        result_type=ReserveOutcome,
    )


async def _reserve_on_books(
    client: Client, task_queue: str, principal: str, ledger_ids: list[str], purchase: str
) -> None:
    """One reservation over `ledger_ids` as the spend activities send it to the books."""
    books_id = books_workflow_id(principal)
    start = SIGNER.signed(
        BooksStart(principal_id=principal), ProofKind.BOOKS_START, books_id, exclude=frozenset({"state"})
    )
    op: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
        "SpendBooks", start, id=books_id, task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )  # fmt: skip
    req = BooksReserve(
        purchase_id=purchase,
        amount=Money(amount=1),
        layers=[BookReserve(start=_ledger_start(lid)) for lid in ledger_ids],
    )
    await client.execute_update_with_start_workflow(
        "reserve_all",
        SIGNER.signed(req, ProofKind.BOOKS_RESERVE, books_id),
        start_workflow_operation=op,
        result_type=BooksReserveOutcome,
    )


@dataclass
class Figure:
    scenario: str
    workflow: str
    ops: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.ops / self.seconds


async def _drive(
    client: Client, task_queue: str, wf: str, entities: int, ops: int, tag: str, layers: int = 1
) -> Figure:
    """`ops` reservations over `entities` ledgers (or books), PER_WORKFLOW_CONCURRENCY at a time on each;
    with `layers` > 1, each reservation holds that many layers (ledgers: one after another)."""
    ids = [f"bench{tag}{uuid.uuid4().hex[:8]}x{i}" for i in range(entities)]
    per_entity = ops // entities

    async def one(entity: str, lane: int) -> None:
        for k in range(lane, per_entity, PER_WORKFLOW_CONCURRENCY):
            if wf == "SpendBooks":
                lids = [f"budget-{entity}-{n}" for n in range(layers)]
                await _reserve_on_books(client, task_queue, entity, lids, f"p{k}")
            else:
                for n in range(layers):
                    await _reserve_on_ledger(client, task_queue, wf, f"{entity}-{n}", f"p{k}")

    lanes = min(PER_WORKFLOW_CONCURRENCY, per_entity)
    began = time.perf_counter()
    await asyncio.gather(*(one(e, w) for e in ids for w in range(lanes)))
    seconds = time.perf_counter() - began
    for e in ids:  # leave nothing running
        for wid in [books_workflow_id(e)] if wf == "SpendBooks" else [f"{e}-{n}" for n in range(layers)]:
            await client.get_workflow_handle(wid).terminate("benchmark done")
    scenario = f"{entities} ledger(s)" if layers == 1 else f"{layers} layers, {entities}"
    return Figure(scenario, wf, per_entity * entities, seconds)


async def run(client: Client, *, quick: bool = False) -> list[Figure]:
    """Run every scenario against `client` with a worker of our own; returns the figures."""
    task_queue = f"bench-{uuid.uuid4().hex[:8]}"
    one_ops, many_ops = (40, 200) if quick else (1_000, 3_000)
    many = 10 if quick else 100
    figures: list[Figure] = []
    authority.add(_KEYS)  # beside whatever keys this process installed already (the test suite's)
    workflows = [SpendLedgerWorkflow, SpendBooksWorkflow, NoopEntity, UnsandboxedNoopEntity]
    # the worker's own runner (sandbox, pass-through modules, shared code), as bench.floor's floor has it
    runner = workflow_runner(PASSTHROUGH)
    async with Worker(client, task_queue=task_queue, workflows=workflows, workflow_runner=runner):
        for wf in SCENARIO_WORKFLOWS:  # warm-up: first tasks pay for imports
            await _drive(client, task_queue, wf, 1, 8, "warm")
        for ledgers, ops in ((1, one_ops), (many, many_ops)):
            for wf in SCENARIO_WORKFLOWS:
                figures.append(await _drive(client, task_queue, wf, ledgers, ops, wf.lower()))
        # a paid purchase's three layers: purchases per second (no no-op baseline: compared with each other)
        for wf in ("SpendLedger", "SpendBooks"):
            figures.append(await _drive(client, task_queue, wf, 1, one_ops // 2, wf.lower(), layers=3))
    return figures


#: the issue's goal: reservations at least this share of the no-op update rate on the same server
RESERVE_GOAL = 0.7
#: the baseline, in the worker's sandbox as the ledgers are; the unsandboxed one is printed beside it
SCENARIO_WORKFLOWS = ("NoopEntity", "UnsandboxedNoopEntity", "SpendLedger", "SpendBooks")
BASELINES = ("NoopEntity", "UnsandboxedNoopEntity")


def table(figures: list[Figure]) -> str:
    head = f"{'scenario':<16}{'workflow':<22}{'ops':>7}{'seconds':>9}{'ops/s':>9}{'vs no-op':>10}"
    lines = [f"{head}{'goal':>10}{'met':>5}{'vs unsandboxed':>16}"]
    noop = {f.scenario: f.per_second for f in figures if f.workflow == "NoopEntity"}
    bare = {f.scenario: f.per_second for f in figures if f.workflow == "UnsandboxedNoopEntity"}
    for f in figures:
        ratio = f.per_second / noop[f.scenario] if f.scenario in noop else float("nan")
        row = f"{f.scenario:<16}{f.workflow:<22}{f.ops:>7}{f.seconds:>9.2f}{f.per_second:>9.1f}{ratio:>10.2f}"
        if f.workflow not in BASELINES and f.scenario in noop:
            row += f"{'>= ' + str(RESERVE_GOAL):>10}{('yes' if ratio >= RESERVE_GOAL else 'no'):>5}"
            row += f"{f.per_second / bare[f.scenario]:>16.2f}"
        lines.append(row)
    lines.append("vs no-op: against a no-op update in the worker's sandbox (its runner, as the ledgers run)")
    lines.append("3 layers: purchases of three layers each (ledgers one after another, books in one update)")
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
