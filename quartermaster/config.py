"""Every setting Quartermaster reads from the environment, in one place (see README, Configuration)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

#: loopback ports of the embedded stack (`qm dev`); production points the URLs elsewhere
DEV_PORTS = {
    "temporal": 7233,
    "ui": 8233,
    "gateway": 8700,
    "codec": 8701,
    "stripe": 8710,
    "cloud": 8721,
    "db": 8722,
    "mail": 8723,
}
DEFAULT_PROVIDERS = {name: f"http://127.0.0.1:{DEV_PORTS[name]}" for name in ("cloud", "db", "mail")}
LOCAL_STRIPE_KEY = "sk_test_quartermaster_local"
#: the embedded store's file in the data directory (see providers/store)
STORE_FILE = "quartermaster.sqlite"


def _parse_providers(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        name, _, url = item.partition("=")
        if not url:
            raise ValueError(f"QM_PROVIDERS entry {name!r} needs the form name=url")
        out[name.strip()] = url.strip().rstrip("/")
    return out


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    data_dir: Path
    task_queue: str = "quartermaster"
    namespace: str = "default"
    public_url: str = f"http://127.0.0.1:{DEV_PORTS['gateway']}"
    providers: dict[str, str] = DEFAULT_PROVIDERS
    stripe_api_key: str = LOCAL_STRIPE_KEY
    stripe_base_url: str = f"http://127.0.0.1:{DEV_PORTS['stripe']}"
    stripe_webhook_secret: str | None = None
    keys_file: Path | None = None
    codec_auth_token: str | None = None
    #: payload-keys-only file for the UI codec server (QM_CODEC_KEYS_FILE); default <data dir>/codec-keys.json
    codec_keys_file: Path | None = None
    codec_cors_origin: str = f"http://localhost:{DEV_PORTS['ui']}"
    #: the one store of server-side state (QM_DATABASE_URL): postgresql://... in production, else a
    #: SQLite file (a path or sqlite:///path); default <data dir>/quartermaster.sqlite
    database_url: str | None = None
    #: QM_AUDIT_DB, the name of the setting before the audit trail joined the store: used when
    #: QM_DATABASE_URL is unset (it then names the whole store)
    audit_db: str | None = None
    approval_timeout_seconds: int = 86_400
    purchase_approval_above: int = 0
    #: renewals (docs/billing.md): the notice before each due date, the grace period of a declined card
    renewal_notice_seconds: int = 3 * 86_400
    renewal_grace_seconds: int = 3 * 86_400
    notify_webhook_url: str | None = None
    #: HMAC key that signs every webhook delivery (QM_NOTIFY_WEBHOOK_SECRET)
    notify_webhook_secret: str | None = None
    #: e-mail channel (QM_SMTP_*): set the host to send approval links and login codes by e-mail
    smtp_host: str | None = None
    smtp_port: int = 587
    #: "starttls", "ssl" (implicit TLS, port 465) or "none" (loopback test servers only)
    smtp_tls: str = "starttls"
    smtp_sender: str = "Quartermaster <quartermaster@localhost>"
    smtp_username: str | None = None
    smtp_password: str | None = None
    #: how long the approval link in a notification logs the human in (capped by the approval's expiry)
    approval_link_ttl_seconds: int = 3600
    #: QM_SPEND_BOOKS: new spend layers are kept in one `SpendBooks` entity per principal ("1", the
    #: default) or in one `SpendLedger` per layer ("0"); layers already in a `SpendLedger` stay there.
    #: Keep "0" during a rolling upgrade from a version without books, until every worker runs this one
    spend_books: bool = True
    dev: bool = False

    @property
    def stripe_is_local(self) -> bool:
        """Real Stripe only when a real test or live key is configured."""
        return not self.stripe_api_key.startswith(("sk_test_", "sk_live_", "rk_test_", "rk_live_")) or (
            self.stripe_api_key == LOCAL_STRIPE_KEY
        )

    @property
    def resolved_keys_file(self) -> Path:
        return self.keys_file or self.data_dir / "keys.json"

    @property
    def resolved_codec_keys_file(self) -> Path:
        return self.codec_keys_file or self.data_dir / "codec-keys.json"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or self.audit_db or str(self.data_dir / STORE_FILE)

    @property
    def resolved_audit_db(self) -> str:
        """Where the audit trail is: in the store."""
        return self.resolved_database_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        data_dir = Path(e.get("QM_DATA_DIR", ".qm")).resolve()
        values: dict[str, object] = {"data_dir": data_dir}
        simple = {
            "QM_TASK_QUEUE": "task_queue",
            "TEMPORAL_NAMESPACE": "namespace",
            "QM_PUBLIC_URL": "public_url",
            "STRIPE_API_KEY": "stripe_api_key",
            "QM_STRIPE_BASE_URL": "stripe_base_url",
            "STRIPE_WEBHOOK_SECRET": "stripe_webhook_secret",
            "QM_KEYS_FILE": "keys_file",
            "QM_CODEC_AUTH_TOKEN": "codec_auth_token",
            "QM_CODEC_KEYS_FILE": "codec_keys_file",
            "QM_CODEC_CORS_ORIGIN": "codec_cors_origin",
            "QM_DATABASE_URL": "database_url",
            "QM_AUDIT_DB": "audit_db",
            "QM_APPROVAL_TIMEOUT_SECONDS": "approval_timeout_seconds",
            "QM_PURCHASE_APPROVAL_ABOVE": "purchase_approval_above",
            "QM_RENEWAL_NOTICE_SECONDS": "renewal_notice_seconds",
            "QM_RENEWAL_GRACE_SECONDS": "renewal_grace_seconds",
            "QM_NOTIFY_WEBHOOK_URL": "notify_webhook_url",
            "QM_NOTIFY_WEBHOOK_SECRET": "notify_webhook_secret",
            "QM_SMTP_HOST": "smtp_host",
            "QM_SMTP_PORT": "smtp_port",
            "QM_SMTP_TLS": "smtp_tls",
            "QM_SMTP_SENDER": "smtp_sender",
            "QM_SMTP_USERNAME": "smtp_username",
            "QM_SMTP_PASSWORD": "smtp_password",
            "QM_APPROVAL_LINK_TTL_SECONDS": "approval_link_ttl_seconds",
        }
        for var, field in simple.items():
            if var in e and e[var] != "":
                values[field] = e[var]
        if e.get("QM_PROVIDERS"):
            values["providers"] = _parse_providers(e["QM_PROVIDERS"])
        values["dev"] = e.get("QM_DEV", "") == "1"
        if e.get("QM_SPEND_BOOKS", "") != "":
            if e["QM_SPEND_BOOKS"] not in ("0", "1"):
                raise ValueError("QM_SPEND_BOOKS is 1 (spend books, the default) or 0 (a ledger per layer)")
            values["spend_books"] = e["QM_SPEND_BOOKS"] == "1"
        return cls.model_validate(values)

    def describe(self) -> dict[str, str]:
        """What is configured, with every secret reduced to 'set' / 'not set'."""
        return {
            "data_dir": str(self.data_dir),
            "task_queue": self.task_queue,
            "namespace": self.namespace,
            "providers": ",".join(f"{k}={v}" for k, v in self.providers.items()),
            "stripe": "local server " + self.stripe_base_url if self.stripe_is_local else "api.stripe.com",
            "stripe_api_key": "set" if self.stripe_api_key else "not set",
            "stripe_webhook_secret": "set"
            if self.stripe_webhook_secret
            else ("dev file" if (self.data_dir / "stripe-webhook-secret").exists() else "not set"),
            "keys_file": str(self.resolved_keys_file),
            "database": _describe_database(self.resolved_database_url),
            "codec_auth_token": "set" if self.codec_auth_token else "not set",
            "notify": "webhook " + self.notify_webhook_url if self.notify_webhook_url else "dev inbox",
            "notify_webhook_secret": "set" if self.notify_webhook_secret else "not set",
        }


def _describe_database(url: str) -> str:
    """The store's kind and host, never its credentials."""
    if "://" not in url or url.startswith("sqlite:"):
        return f"sqlite {url.removeprefix('sqlite://')}"
    host = url.split("://", 1)[1].rsplit("@", 1)[-1].split("/", 1)[0]
    return f"postgresql on {host}"
