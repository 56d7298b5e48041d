"""`QuartermasterClient`: resources as attributes (`qm.provisions.create`), typed results, typed errors.

Credentials, by who calls:
- an agent under `qm run`: its session token (bearer) and its identity token (re-read from the file
  `qm run` refreshes, so a long-running agent keeps a fresh one);
- a human: the login token `qm login` saved (or `QM_HUMAN_TOKEN`);
- nobody: catalog and quotes only.
The `httpx.AsyncClient` may be injected (tests use `httpx.ASGITransport`); it is closed only if created here.
"""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from models.api import (
    ApprovalPending,
    ApprovalView,
    AttestResult,
    LoginStarted,
    LoginToken,
    ProvisionView,
    ResourceAction,
    ResourceInfo,
    WhoAmI,
)
from models.approval import APPROVAL_PAGE, APPROVALS_PAGE_MAX, ApprovalRequest, DecisionOutcome
from models.catalog import Catalog
from models.errors import ErrorCode
from models.forecast import Forecast
from models.limits import LimitKind, SpendSummary
from models.link import LinkView
from models.money import Money
from models.plan_change import PlanChangeQuote, PlanChangeView
from models.provisioning import Quote
from models.session import AgentStatus, CloseSummary, FreezeResult, SessionState
from quartermaster.client import config
from quartermaster.client.env import (
    DEFAULT_API_URL,
    ENV_API_URL,
    ENV_HUMAN_TOKEN,
    ENV_SESSION,
    identity_token_from_env,
)
from quartermaster.client.errors import ApiError, error_from_response
from quartermaster.http_transport import async_http_client

T = TypeVar("T")
IDENTITY_HEADER = "X-QM-Identity"
NEXT_CURSOR_HEADER = "X-QM-Next-Cursor"
#: how long one call may wait server-side for a request to move (the API caps it at 30 s)
LONG_POLL_SECONDS = 25


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _money(m: Money | None) -> dict[str, Any] | None:
    return m.model_dump(mode="json") if m is not None else None


class _Resource:
    def __init__(self, client: QuartermasterClient) -> None:
        self._c = client


class Catalogs(_Resource):
    async def list(self, provider: str | None = None) -> list[Catalog]:
        return await self._c.request(
            "GET", "/v1/catalog", list[Catalog], params=_drop_none({"provider": provider})
        )


class Quotes(_Resource):
    async def create(
        self, service_id: str, configuration: dict[str, Any] | None = None, max_price: Money | None = None
    ) -> Quote:
        body = _drop_none(
            {"service_id": service_id, "configuration": configuration or {}, "max_price": _money(max_price)}
        )
        return await self._c.request("POST", "/v1/quotes", Quote, json=body)


class Provisions(_Resource):
    async def create(
        self,
        *,
        service_id: str,
        name: str,
        request_id: str | None = None,
        configuration: dict[str, Any] | None = None,
        max_price: Money | None = None,
        budget: Money | None = None,
        scopes: list[str] | None = None,
        credential_ttl_seconds: int | None = None,
        wait: float = 0,
    ) -> ProvisionView:
        body = _drop_none(
            {
                "request_id": request_id,
                "service_id": service_id,
                "name": name,
                "configuration": configuration or {},
                "max_price": _money(max_price),
                "budget": _money(budget),
                "scopes": scopes or [],
                "credential_ttl_seconds": credential_ttl_seconds,
            }
        )
        params = {"wait": min(wait, LONG_POLL_SECONDS)} if wait else None
        return await self._c.request("POST", "/v1/provisions", ProvisionView, json=body, params=params)

    async def get(self, request_id: str, *, wait: float = 0) -> ProvisionView:
        params = {"wait": min(wait, LONG_POLL_SECONDS)} if wait else None
        return await self._c.request(
            "GET", f"/v1/provisions/{_seg(request_id)}", ProvisionView, params=params
        )

    async def wait(
        self,
        request_id: str,
        *,
        timeout: float,
        on_progress: Callable[[ProvisionView], None] | None = None,
        through_humans: bool = False,
    ) -> ProvisionView:
        """Follow a request until it finishes, waits for a human, or `timeout` seconds pass. With
        `through_humans` (a person at a terminal), keep following while a human decides."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            view = await self.get(request_id, wait=max(0.0, min(left, LONG_POLL_SECONDS)))
            if on_progress is not None:
                on_progress(view)
            if loop.time() >= deadline:
                return view
            if view.state == "waiting_for_human" and through_humans:
                await asyncio.sleep(min(1.0, max(0.0, deadline - loop.time())))  # the API answers at once
                continue
            if view.state != "running":
                return view


class Approvals(_Resource):
    async def list(self) -> list[ApprovalRequest]:
        """Every approval waiting for you (all pages)."""
        out: builtins.list[ApprovalRequest] = []
        cursor: str | None = None
        while True:
            items, cursor = await self.page(cursor=cursor, limit=APPROVALS_PAGE_MAX)
            out += items
            if cursor is None:
                return out

    async def page(
        self, *, cursor: str | None = None, limit: int = 100
    ) -> tuple[builtins.list[ApprovalRequest], str | None]:
        """One page, oldest first, and the cursor of the next (None on the last page)."""
        resp = await self._c._send(
            "GET", "/v1/approvals", json=None, params=_drop_none({"cursor": cursor, "limit": limit})
        )
        items = APPROVAL_PAGE.validate_json(resp.content)
        return items, resp.headers.get(NEXT_CURSOR_HEADER)

    async def get(self, approval_id: str) -> ApprovalView:
        """The approval with its `view_hash`: pass it to `decide` to bind the decision to it."""
        return await self._c.request("GET", f"/v1/approvals/{_seg(approval_id)}", ApprovalView)

    async def decide(
        self,
        approval_id: str,
        *,
        decision: str,
        code: str,
        reason: str | None = None,
        information: dict[str, Any] | None = None,
        raise_limit_to: Money | None = None,
        view_hash: str | None = None,
    ) -> DecisionOutcome:
        body = _drop_none(
            {
                "decision": decision,
                "code": code,
                "reason": reason,
                "information": information,
                "raise_limit_to": _money(raise_limit_to),
                "view_hash": view_hash,
            }
        )
        return await self._c.request(
            "POST", f"/v1/approvals/{_seg(approval_id)}/decision", DecisionOutcome, json=body
        )


class Links(_Resource):
    async def start(self, provider: str) -> LinkView:
        """Link your existing account at `provider` (OAuth consent; nothing is bought)."""
        return await self._c.request("POST", "/v1/links", LinkView, json={"provider": provider})

    async def get(self, provider: str) -> LinkView:
        return await self._c.request("GET", f"/v1/links/{_seg(provider)}", LinkView)


class Resources(_Resource):
    async def list(self) -> list[ResourceInfo]:
        return await self._c.request("GET", "/v1/resources", list[ResourceInfo])

    async def get(self, resource_id: str) -> ResourceInfo:
        return await self._c.request("GET", f"/v1/resources/{_seg(resource_id)}", ResourceInfo)

    async def credentials(self, resource_id: str) -> dict[str, str]:
        """The values, for a child process's environment only (`qm exec`); never print or log them."""
        return await self._c.request("GET", f"/v1/resources/{_seg(resource_id)}/credentials", dict[str, str])

    async def rotate(self, resource_id: str) -> ResourceAction:
        return await self._c.request("POST", f"/v1/resources/{_seg(resource_id)}/rotate", ResourceAction)

    async def remove(self, resource_id: str) -> ResourceAction:
        return await self._c.request("DELETE", f"/v1/resources/{_seg(resource_id)}", ResourceAction)

    async def plan_quote(self, resource_id: str, to_service_id: str) -> PlanChangeQuote:
        """The proration of a change to `to_service_id`, before anything moves."""
        return await self._c.request(
            "POST",
            f"/v1/resources/{_seg(resource_id)}/plan/quote",
            PlanChangeQuote,
            json={"to_service_id": to_service_id},
        )

    async def change_plan(
        self,
        resource_id: str,
        to_service_id: str,
        *,
        direction: str,
        request_id: str | None = None,
        wait_seconds: float = 20,
    ) -> PlanChangeView:
        """`direction` is "upgrade" or "downgrade"; the same `request_id` finds the same change."""
        if direction not in ("upgrade", "downgrade"):
            raise ValueError("direction is upgrade or downgrade")
        body = _drop_none(
            {"to_service_id": to_service_id, "request_id": request_id, "wait_seconds": wait_seconds}
        )
        return await self._c.request(
            "POST", f"/v1/resources/{_seg(resource_id)}/{direction}", PlanChangeView, json=body
        )


class Sessions(_Resource):
    async def open(
        self,
        *,
        agent: str,
        allowed_services: builtins.list[str],
        budget: Money,
        ttl_seconds: int = 3600,
        max_depth: int = 0,
        allowed_scopes: builtins.list[str] | None = None,
    ) -> SessionState:
        body = _drop_none(
            {
                "agent": agent,
                "allowed_services": allowed_services,
                "budget": _money(budget),
                "ttl_seconds": ttl_seconds,
                "max_depth": max_depth,
                "allowed_scopes": allowed_scopes,
            }
        )
        return await self._c.request("POST", "/v1/sessions", SessionState, json=body)

    async def list(self, *, all: bool = False) -> builtins.list[SessionState]:
        return await self._c.request("GET", "/v1/sessions", builtins.list[SessionState], params={"all": all})

    async def get(self, session_id: str) -> SessionState:
        return await self._c.request("GET", f"/v1/sessions/{_seg(session_id)}", SessionState)

    async def delegate(
        self,
        *,
        to_agent: str,
        allowed_services: builtins.list[str] | None = None,
        budget: Money | None = None,
        ttl_seconds: int | None = None,
        max_depth: int | None = None,
        allowed_scopes: builtins.list[str] | None = None,
    ) -> SessionState:
        body = _drop_none(
            {
                "to_agent": to_agent,
                "allowed_services": allowed_services,
                "budget": _money(budget),
                "ttl_seconds": ttl_seconds,
                "max_depth": max_depth,
                "allowed_scopes": allowed_scopes,
            }
        )
        return await self._c.request("POST", "/v1/sessions/delegate", SessionState, json=body)

    async def revoke(self, session_id: str, *, reason: str = "revoked by the principal") -> CloseSummary:
        return await self._c.request(
            "POST", f"/v1/sessions/{_seg(session_id)}/revoke", CloseSummary, json={"reason": reason}
        )


class Identities(_Resource):
    async def attest(self, *, agent: str, measurement: dict[str, Any], session_id: str) -> AttestResult:
        body = {"agent": agent, "measurement": measurement, "session_id": session_id}
        return await self._c.request("POST", "/v1/identities", AttestResult, json=body)

    async def retire(self, jtis: list[str]) -> None:
        await self._c.call("POST", "/v1/identities/retire", json={"jtis": jtis})


class Agents(_Resource):
    async def show(self, name: str) -> AgentStatus:
        return await self._c.request("GET", f"/v1/agents/{_seg(name)}", AgentStatus)

    async def freeze(self, name: str, *, reason: str = "kill switch") -> FreezeResult:
        return await self._c.request(
            "POST", f"/v1/agents/{_seg(name)}/freeze", FreezeResult, json={"reason": reason}
        )

    async def unfreeze(self, name: str, *, reason: str = "unfreeze") -> AgentStatus:
        return await self._c.request(
            "POST", f"/v1/agents/{_seg(name)}/unfreeze", AgentStatus, json={"reason": reason}
        )


class Billing(_Resource):
    async def show(self, month: str | None = None) -> SpendSummary:
        return await self._c.request("GET", "/v1/billing", SpendSummary, params=_drop_none({"month": month}))

    async def forecast(self, months: int | None = None) -> Forecast:
        """Committed future charges (scheduled renewals) per month and provider, against each cap."""
        params = _drop_none({"months": months})
        return await self._c.request("GET", "/v1/billing/forecast", Forecast, params=params)

    async def set_limit(
        self,
        limit: Money | None = None,
        provider: str | None = None,
        *,
        kind: LimitKind = "monthly",
        agent: str | None = None,
        purchases_per_hour: int | None = None,
    ) -> ApprovalPending:
        """Ask for a new limit (it applies once the human approves): the monthly cap (global or
        `provider`), or an agent layer (`kind` `agent_monthly` / `per_transaction` with `limit`,
        `velocity` with `purchases_per_hour`; `agent` None = every agent)."""
        body = _drop_none(
            {
                "limit": _money(limit) if limit is not None else None,
                "provider": provider,
                "kind": kind if kind != "monthly" else None,
                "agent": agent,
                "purchases_per_hour": purchases_per_hour,
            }
        )
        return await self._c.request("POST", "/v1/billing/limits", ApprovalPending, json=body)


class Auth(_Resource):
    async def login(self, email: str) -> LoginStarted:
        return await self._c.request("POST", "/v1/login", LoginStarted, json={"email": email})

    async def verify(self, login_id: str, code: str) -> LoginToken:
        return await self._c.request(
            "POST", "/v1/login/verify", LoginToken, json={"login_id": login_id, "code": code}
        )

    async def logout(self) -> None:
        await self._c.call("POST", "/v1/logout")

    async def whoami(self) -> WhoAmI:
        return await self._c.request("GET", "/v1/whoami", WhoAmI)


class Dev(_Resource):
    async def inbox(self, email: str) -> list[dict[str, Any]]:
        """The dev channel's messages (only under `qm dev`)."""
        return await self._c.request("GET", "/v1/dev/inbox", list[dict[str, Any]], params={"email": email})


def _seg(value: str) -> str:
    """One path segment, escaped: an id can never reach another route."""
    from urllib.parse import quote

    return quote(value, safe="")


class QuartermasterClient:
    def __init__(
        self,
        base_url: str = DEFAULT_API_URL,
        *,
        human_token: str | None = None,
        session_token: str | None = None,
        identity_token: str | Callable[[], str | None] | None = None,
        http_client: httpx.AsyncClient | None = None,
        timeout: float = 60,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._human = human_token
        self._session = session_token
        self._identity = identity_token
        self._own_http = http_client is None
        self._http = http_client or async_http_client(timeout=timeout)
        self.catalog = Catalogs(self)
        self.quotes = Quotes(self)
        self.provisions = Provisions(self)
        self.approvals = Approvals(self)
        self.resources = Resources(self)
        self.links = Links(self)
        self.sessions = Sessions(self)
        self.identities = Identities(self)
        self.agents = Agents(self)
        self.billing = Billing(self)
        self.auth = Auth(self)
        self.dev = Dev(self)

    @classmethod
    def from_env(cls, *, http_client: httpx.AsyncClient | None = None) -> QuartermasterClient:
        """The API's URL and the caller's own tokens, from what `qm run` injected or `qm login` saved."""
        login = config.load_login()
        url = os.environ.get(ENV_API_URL) or (login or {}).get("api_url") or DEFAULT_API_URL
        session = os.environ.get(ENV_SESSION)
        if session:
            return cls(
                url, session_token=session, identity_token=identity_token_from_env, http_client=http_client
            )
        human = os.environ.get(ENV_HUMAN_TOKEN) or (login or {}).get("token")
        return cls(url, human_token=human, http_client=http_client)

    @property
    def role(self) -> str:
        return "agent" if self._session else "human" if self._human else "anonymous"

    def _headers(self) -> dict[str, str]:
        if self._session:
            identity = self._identity() if callable(self._identity) else self._identity
            headers = {"Authorization": f"Bearer {self._session}"}
            if identity:
                headers[IDENTITY_HEADER] = identity
            return headers
        if self._human:
            return {"Authorization": f"Bearer {self._human}"}
        return {}

    async def request(
        self,
        method: str,
        path: str,
        result_type: type[T],
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> T:
        """One call; a non-2xx answer raises `ApiError` with the API's code."""
        resp = await self._send(method, path, json=json, params=params)
        data = resp.json()
        if isinstance(result_type, type) and issubclass(result_type, BaseModel):
            return result_type.model_validate(data)
        return TypeAdapter(result_type).validate_python(data)

    async def call(self, method: str, path: str, *, json: Any = None) -> None:
        """A call whose answer has no body."""
        await self._send(method, path, json=json, params=None)

    async def _send(
        self, method: str, path: str, *, json: Any, params: dict[str, Any] | None
    ) -> httpx.Response:
        try:
            resp = await self._http.request(
                method, self.base_url + path, json=json, params=params, headers=self._headers()
            )
        except httpx.HTTPError as exc:
            raise ApiError(
                ErrorCode.API_UNAVAILABLE,
                f"cannot reach the Quartermaster API at {self.base_url} ({type(exc).__name__})",
            ) from None
        if resp.status_code >= 300:
            raise error_from_response(resp)
        return resp

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> QuartermasterClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
