"""Connecting to Temporal: `temporalio.envconfig` for the address, TLS, API key and profiles."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.envconfig import ClientConfig

from quartermaster.config import Settings
from quartermaster.converter import data_converter
from quartermaster.keys import Keyring, load_keyring


def load_codec(keyring: Keyring):  # type: ignore[no-untyped-def]
    from quartermaster.codec import EncryptionCodec

    return EncryptionCodec(keyring)


async def connect(settings: Settings, keyring: Keyring | None = None) -> Client:
    """A client with the project's converter. TEMPORAL_ADDRESS etc. come from envconfig."""
    keyring = keyring or load_keyring(settings.resolved_keys_file, create=settings.dev)
    cfg = ClientConfig.load_client_connect_config()
    cfg.setdefault("target_host", "localhost:7233")
    cfg.setdefault("namespace", settings.namespace)
    return await Client.connect(**cfg, data_converter=data_converter(load_codec(keyring)))
