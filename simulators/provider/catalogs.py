"""The three simulated providers' catalogs: different services, prices, scopes and terms versions."""

from __future__ import annotations

from typing import Any

from models.catalog import Catalog, Pricing, ProviderInfo, ServiceEntry
from models.money import Money

#: the scope an account credential (from `POST /accounts` or OAuth) needs to act on the account
ACCOUNT_SCOPE = "account:manage"

_REGISTRANT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "email", "country"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 120},
        "email": {"type": "string", "format": "email", "maxLength": 254},
        "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
    },
}

_DOMAIN_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["domain"],
    "properties": {
        "domain": {
            "type": "string",
            "pattern": r"^(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$",
        },
        "auto_renew": {"type": "boolean", "default": True},
        "registrant_contact": _REGISTRANT,
    },
}

#: what a domain registration asks for when the contact was left out
REGISTRANT_NEEDED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["registrant_contact"],
    "properties": {"registrant_contact": _REGISTRANT},
}

_NAMED_SCHEMA = {"type": "object", "additionalProperties": False, "properties": {}}

_R2_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "location": {"type": "string", "enum": ["auto", "wnam", "enam", "weur", "apac"], "default": "auto"},
    },
}

_PG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "region": {"type": "string", "enum": ["us-east", "eu-west"], "default": "us-east"},
        "version": {"type": "string", "enum": ["16", "17"], "default": "17"},
    },
}

_MAIL_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sending_domain": {
            "type": "string",
            "pattern": r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$",
        },
    },
}


def _paid(amount: int, interval: str) -> Pricing:
    return Pricing.model_validate({"type": "paid", "price": Money(amount=amount), "interval": interval})


FREE = Pricing(type="free")

CATALOGS: dict[str, Catalog] = {
    "cloud": Catalog(
        provider=ProviderInfo(
            name="cloud",
            description="A Cloudflare-like edge cloud: domains, serverless workers, object storage.",
            tos_url="https://cloud.example/terms",
            terms_version="2026-04-01",
            privacy_policy_url="https://cloud.example/privacy",
            website_url="https://cloud.example",
        ),
        services=[
            ServiceEntry(
                service_id="cloud/registrar:domain",
                kind="deployable",
                description="Register a domain name for one year, with DNS hosting.",
                pricing=_paid(1099, "year"),
                configuration_schema=_DOMAIN_SCHEMA,
                scopes=["dns:read", "dns:write"],
                reversible=False,
                llm_context="Registration is final: removing it is refused. Needs registrant_contact "
                "(name, email, ISO country); without it the resource waits in needs_information.",
            ),
            ServiceEntry(
                service_id="cloud/workers",
                kind="deployable",
                description="Serverless functions at the edge (free tier).",
                pricing=FREE,
                configuration_schema=_NAMED_SCHEMA,
                scopes=["workers:deploy", "workers:read"],
                llm_context="Free. Mint a credential with workers:deploy to publish scripts.",
            ),
            ServiceEntry(
                service_id="cloud/r2",
                kind="deployable",
                description="S3-compatible object storage bucket.",
                pricing=_paid(500, "month"),
                configuration_schema=_R2_SCHEMA,
                scopes=["r2:read", "r2:write"],
                llm_context="USD 5.00 per month per bucket. `location` is a placement hint.",
            ),
        ],
    ),
    "db": Catalog(
        provider=ProviderInfo(
            name="db",
            description="A managed Postgres provider.",
            tos_url="https://db.example/legal/terms",
            terms_version="2025-11-15",
            privacy_policy_url="https://db.example/legal/privacy",
            website_url="https://db.example",
        ),
        services=[
            ServiceEntry(
                service_id="db/postgres:free",
                kind="plan",
                description="Postgres, shared CPU, 500 MB.",
                pricing=FREE,
                configuration_schema=_PG_SCHEMA,
                scopes=["db:connect", "db:admin"],
                llm_context="Free plan, ready at once.",
            ),
            ServiceEntry(
                service_id="db/postgres:pro",
                kind="plan",
                description="Postgres, dedicated CPU, 50 GB, daily backups.",
                pricing=_paid(2500, "month"),
                configuration_schema=_PG_SCHEMA,
                scopes=["db:connect", "db:admin"],
                llm_context="USD 25.00 per month. Provisioning takes a moment: poll until complete.",
                allowed_updates=["db/postgres:team"],
            ),
            ServiceEntry(
                service_id="db/postgres:team",
                kind="plan",
                description="Postgres, 4 dedicated CPUs, 200 GB, point-in-time recovery.",
                pricing=_paid(5000, "month"),
                configuration_schema=_PG_SCHEMA,
                scopes=["db:connect", "db:admin"],
                llm_context="USD 50.00 per month; at most one per account. Reached by upgrading "
                "db/postgres:pro (qm upgrade RES --to db/postgres:team), prorated.",
                allowed_updates=["db/postgres:pro"],
                constraints={"max_resources": 1},
            ),
        ],
    ),
    "mail": Catalog(
        provider=ProviderInfo(
            name="mail",
            description="A transactional email API.",
            tos_url="https://mail.example/terms",
            terms_version="2026-02-10",
            privacy_policy_url="https://mail.example/privacy",
            website_url="https://mail.example",
        ),
        services=[
            ServiceEntry(
                service_id="mail/send:starter",
                kind="plan",
                description="50,000 emails per month through the HTTP API.",
                pricing=_paid(1500, "month"),
                configuration_schema=_MAIL_SCHEMA,
                scopes=["mail:send", "mail:stats"],
                llm_context="USD 15.00 per month. Mint a credential with mail:send for the sending app.",
            ),
        ],
    ),
}

#: how long `db/postgres:pro` stays pending, and after how many polls it completes anyway
PENDING_SECONDS = 1.0
PENDING_POLLS = 2


def catalog_for(provider: str) -> Catalog:
    """The catalog of one simulated provider; KeyError for an unknown name."""
    return CATALOGS[provider]


def all_scopes(catalog: Catalog) -> set[str]:
    """Every scope the provider knows: the account scope plus each service's."""
    return {ACCOUNT_SCOPE, *(s for svc in catalog.services for s in svc.scopes)}
