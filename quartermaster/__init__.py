"""Quartermaster: the orchestrator's client, CLI, configuration and local stack."""

__version__ = "0.2.0"
