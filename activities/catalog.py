"""Discovery and quoting: read a provider's catalog, validate the request against it, price it."""

from __future__ import annotations

import functools
import json

import jsonschema
from temporalio import activity

from activities.errors import adapter_errors, permanent
from models.catalog import Catalog
from models.errors import ErrorCode, QuartermasterError
from models.provisioning import DiscoverInput, Policy, Quote
from providers.registry import ProviderRegistry, UnknownProviderError


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    """A compiled validator per schema: building one checks the schema itself, which is the slow part."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def make_quote(catalog: Catalog, inp: DiscoverInput) -> Quote:
    """Price `inp.service_id` from `catalog`; raise `QuartermasterError` for bad input. Pure."""
    entry = catalog.service(inp.service_id)
    if entry is None:
        raise QuartermasterError(ErrorCode.UNKNOWN_SERVICE, f"{inp.service_id} is not in the catalog")
    try:
        _validator(json.dumps(entry.configuration_schema, sort_keys=True)).validate(inp.configuration)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise QuartermasterError(
            ErrorCode.INVALID_CONFIGURATION, f"configuration {where}: {exc.message}"
        ) from None
    price = entry.pricing.price if entry.pricing.type == "paid" else None
    if price is not None and inp.max_price is not None:
        if inp.max_price.currency != price.currency:
            raise QuartermasterError(
                ErrorCode.CURRENCY_MISMATCH,
                f"price is in {price.currency}, maximum in {inp.max_price.currency}",
            )
        if price.amount > inp.max_price.amount:
            raise QuartermasterError(
                ErrorCode.PRICE_ABOVE_MAXIMUM, f"price {price} is above the maximum {inp.max_price}"
            )
    interval = entry.pricing.interval if price is not None else None
    return Quote(
        service=entry,
        terms_version=catalog.provider.terms_version,
        tos_url=catalog.provider.tos_url,
        due_now=price,
        recurring=price if interval in ("month", "year") else None,
        interval=interval,
        reversible=entry.reversible,
    )


class CatalogActivities:
    def __init__(self, registry: ProviderRegistry, policy: Policy) -> None:
        self._registry = registry
        self._policy = policy

    @activity.defn(name="discover")
    async def discover(self, inp: DiscoverInput) -> Quote:
        provider_name = inp.service_id.split("/", 1)[0]
        try:
            provider = self._registry.get(provider_name)
        except UnknownProviderError:
            raise permanent(ErrorCode.UNKNOWN_PROVIDER, f"no provider named {provider_name!r}") from None
        with adapter_errors("catalog"):
            catalog = await provider.catalog()
        try:
            return make_quote(catalog, inp)
        except QuartermasterError as err:
            raise permanent(err.code, err.message) from None

    @activity.defn(name="load_policy")
    async def load_policy(self) -> Policy:
        return self._policy
