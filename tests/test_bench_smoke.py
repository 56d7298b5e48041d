"""Benchmark scripts in quick mode, so they cannot rot. Figures are printed, never asserted on."""

from __future__ import annotations

from temporalio.client import Client


async def test_ledger_bench_quick(client: Client) -> None:
    from bench import ledger_bench

    figures = await ledger_bench.run(client, quick=True)
    print("\n" + ledger_bench.table(figures))
    assert {(f.scenario, f.workflow) for f in figures} == {
        ("1 ledger(s)", "NoopEntity"),
        ("1 ledger(s)", "SpendLedger"),
        ("10 ledger(s)", "NoopEntity"),
        ("10 ledger(s)", "SpendLedger"),
    }
    assert all(f.ops > 0 and f.seconds > 0 for f in figures)
