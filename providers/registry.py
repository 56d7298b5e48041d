"""`ProviderRegistry`: provider name -> adapter. Configured providers (`QM_PROVIDERS`, name=url) get the
generic `HttpProvider`; a package can plug in its own adapter through the entry-point group
`quartermaster.providers` (`name = "package.module:factory"`), whose factory is called as
`factory(name=..., base_url=...)` (`base_url` is None when the name is not configured) and replaces the
generic adapter for that name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points

import httpx

from providers.contract import Provider
from providers.errors import PermanentProviderError
from providers.http_provider import HttpProvider
from quartermaster.config import Settings
from quartermaster.http_transport import async_http_client

ENTRY_POINT_GROUP = "quartermaster.providers"


class UnknownProviderError(PermanentProviderError):
    """No adapter is registered under that name."""

    def __init__(self, name: str) -> None:
        # provider names are configuration, not secrets; still cap what lands in a message
        super().__init__("unknown_provider", f"no provider named {name[:40]!r}")
        self.name = name


class InvalidAdapterError(TypeError):
    """A plug-in factory returned something that does not implement `providers.contract.Provider`."""


def discover_entry_points() -> Iterable[EntryPoint]:
    """The installed third-party adapters (a seam tests replace)."""
    return entry_points(group=ENTRY_POINT_GROUP)


class ProviderRegistry:
    """Adapters by provider name. `aclose()` closes the HTTP client the registry created."""

    def __init__(
        self, adapters: Mapping[str, Provider], *, owned_client: httpx.AsyncClient | None = None
    ) -> None:
        self._adapters = dict(adapters)
        self._owned_client = owned_client

    @classmethod
    def from_settings(
        cls, settings: Settings, http_client: httpx.AsyncClient | None = None
    ) -> ProviderRegistry:
        """Generic adapters for `settings.providers`, then plug-ins from the entry-point group."""
        owned = None
        if http_client is None:
            owned = http_client = async_http_client()
        adapters: dict[str, Provider] = {
            name: HttpProvider(name=name, base_url=url, http_client=http_client)
            for name, url in settings.providers.items()
        }
        for ep in discover_entry_points():
            adapter = ep.load()(name=ep.name, base_url=settings.providers.get(ep.name))
            if not isinstance(adapter, Provider):
                raise InvalidAdapterError(f"entry point {ep.name!r} did not build a Provider")
            adapters[ep.name] = adapter
        return cls(adapters, owned_client=owned)

    def get(self, name: str) -> Provider:
        """The adapter for `name`; UnknownProviderError (code `unknown_provider`) otherwise."""
        try:
            return self._adapters[name]
        except KeyError:
            raise UnknownProviderError(name) from None

    def names(self) -> list[str]:
        return sorted(self._adapters)

    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    async def aclose(self) -> None:
        if self._owned_client is not None:
            await self._owned_client.aclose()
