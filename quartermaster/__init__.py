"""Quartermaster: the orchestrator's client, CLI, configuration and local stack."""
