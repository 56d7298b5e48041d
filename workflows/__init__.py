"""Deterministic orchestration. Imports only stdlib, temporalio and models at top level."""
