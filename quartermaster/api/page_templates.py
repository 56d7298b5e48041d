"""HTML of the approval pages: Python string templates; every value goes through `html.escape`.

One layout; a section per fact group; kind-specific sections (Checkout link, provider link, the form
generated from `needs_information_schema`, the session grant, the limit change, the agent).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from models.money import Money
from quartermaster.api.approval_facts import ApprovalFacts

TITLES = {
    "terms": "Accept the provider's terms of service",
    "payment_method": "Add a payment method",
    "oauth_consent": "Link your existing account at the provider",
    "purchase": "Approve an irreversible purchase",
    "spend_limit": "Spend over this month's limit",
    "information": "Information the provider needs",
    "session_open": "Open a session for an agent",
    "limit_change": "Change a monthly spending limit",
    "agent_unfreeze": "Unfreeze an agent",
}

#: the agent limits a `limit_change` may set (docs/spend.md), as the page names them
AGENT_LIMIT_WORDS = {
    "agent_monthly": "an agent's monthly spending limit (over every provider)",
    "per_transaction": "an agent's maximum per purchase",
    "velocity": "an agent's purchases per hour",
}

NEXT_STEP = {
    "terms": "Quartermaster accepts the terms in your name and continues the request.",
    "payment_method": "Add the card on the Checkout page; the request continues once the card is on file.",
    "oauth_consent": "Approve at the provider; you come back here and the request continues.",
    "purchase": "The card on file is charged and the resource is created. This cannot be undone.",
    "spend_limit": "This one purchase may go over the limit; the request continues.",
    "information": "The information goes to the provider and the request continues.",
    "session_open": "The agent's session becomes active with exactly this grant.",
    "limit_change": "The new monthly limit applies at once.",
    "agent_unfreeze": "The agent may act again under its sessions.",
}

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:46rem;margin:2rem auto;
padding:0 1rem;color:#1a1a1a;line-height:1.45}
header{font-size:.9rem;color:#555;border-bottom:1px solid #ddd;padding-bottom:.5rem;margin-bottom:1rem}
h1{font-size:1.5rem;margin:.2rem 0 .6rem} h2{font-size:1.05rem;margin:1.2rem 0 .3rem;color:#333}
table{border-collapse:collapse;width:100%} th{text-align:left;font-weight:600;width:14rem;color:#444}
th,td{padding:.3rem .4rem;border-bottom:1px solid #eee;vertical-align:top}
.summary{font-size:1.1rem;background:#f4f6fa;padding:.6rem .8rem;border-radius:6px}
.warn{background:#fff4e5;border:1px solid #f0b45a;padding:.5rem .8rem;border-radius:6px}
.big{font-size:1.3rem;font-weight:700} .muted{color:#666;font-size:.85rem}
form.decide{margin-top:1.4rem;padding:1rem;border:1px solid #ccd;border-radius:8px}
textarea,input[type=text],input[type=email]{width:100%;box-sizing:border-box;padding:.4rem;font:inherit}
button{font:inherit;padding:.5rem 1.2rem;margin-right:.6rem;border-radius:6px;border:1px solid #888;
cursor:pointer}
button.approve{background:#1f7a3a;color:#fff;border-color:#1f7a3a} button.deny{background:#fff;color:#a11}
.code{font-family:ui-monospace,monospace} a.action{font-weight:700;font-size:1.1rem}
"""


def layout(title: str, body: str, *, who: str | None = None) -> str:
    top = f"Quartermaster · signed in as {escape(who)}" if who else "Quartermaster"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header>{top}</header>{body}</body></html>"
    )


def money(m: Money | None) -> str:
    return "—" if m is None else escape(str(m))


def _rows(rows: list[tuple[str, str]]) -> str:
    """Rows of (label, already-escaped HTML)."""
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows if v)
    return f"<table>{cells}</table>"


def _value(v: Any) -> str:
    if isinstance(v, dict):
        return _rows([(str(k), _value(x)) for k, x in v.items()])
    if isinstance(v, list):
        return escape(", ".join(str(x) for x in v))
    return escape(str(v))


def _when(t: datetime | None) -> str:
    return escape(t.strftime("%Y-%m-%d %H:%M UTC")) if t else ""


def _interval(interval: str | None) -> str:
    return {"month": "per month", "year": "per year", "one_time": "once"}.get(interval or "", interval or "")


def _who(f: ApprovalFacts) -> str:
    rows = [("Principal", escape(f.principal_email))]
    if f.agent_chain:
        rows.append(("Agent chain", escape(" → ".join(f.agent_chain))))
    if f.session is not None:
        s = f.session
        rows += [
            ("Session", f'<span class="code">{escape(s.session_id)}</span>'),
            ("Session budget", f"{money(s.budget)} (spent {money(s.spent)}, remaining {money(s.remaining)})"),
        ]
        if s.expires_at:
            rows.append(("Session expires", _when(s.expires_at)))
    elif f.workflow_id.startswith("provision-"):
        rows.append(("Session", "none: your own request"))
    return "<h2>Who asks</h2>" + _rows(rows)


def _what(f: ApprovalFacts) -> str:
    if not f.service_id:
        return ""
    rows = [
        ("Provider", escape(f.provider or "")),
        ("Service", escape(f"{f.service_id} — {f.service_description or ''}")),
        ("Plan", escape(f.plan or "")),
        ("Name", escape(f.name or "")),
    ]
    if "domain" in f.configuration:
        rows.append(
            ("Domain", f'<span class="big" id="domain">{escape(str(f.configuration["domain"]))}</span>')
        )
    for k, v in f.configuration.items():
        if k != "domain":
            rows.append((f"Configuration: {k}", _value(v)))
    return "<h2>What</h2>" + _rows(rows)


def _cost(f: ApprovalFacts) -> str:
    if f.kind in ("session_open", "agent_unfreeze", "limit_change"):
        return ""
    rows = [
        ("Due now", f'<span class="big" id="due-now">{money(f.due_now)}</span>'),
        ("Recurring", f"{money(f.recurring)} {escape(_interval(f.interval))}" if f.recurring else "none"),
    ]
    if f.reversible is not None:
        rows.append(("Can be undone", "yes" if f.reversible else "<strong>no: this is final</strong>"))
    return "<h2>How much</h2>" + _rows(rows)


def _cap(f: ApprovalFacts) -> str:
    c = f.cap
    if c is None:
        return ""
    rows = [
        ("Month", escape(c.month)),
        ("Provider", escape(c.provider)),
        ("Spent so far", f"{money(c.spent)} of {money(c.limit)} (reserved {money(c.reserved)})"),
    ]
    if c.limit_after is not None:
        rows.append(("Limit", f'<span id="cap-effect">{money(c.limit)} → {money(c.limit_after)}</span>'))
    else:
        rows.append(("After this", f'<span id="cap-effect">{money(c.after)} of {money(c.limit)}</span>'))
    warn = '<p class="warn">This goes over the monthly limit.</p>' if c.over_limit else ""
    return "<h2>Effect on this month's cap</h2>" + _rows(rows) + warn


def _forecast(f: ApprovalFacts) -> str:
    """The coming months this purchase's renewals fall in, and any it would push over the cap."""
    fc = f.forecast
    if fc is None or not fc.months:
        return ""
    rows = [
        (
            escape(m.month),
            f"{money(m.total)} of {money(m.limit)}"
            + (" <strong>over the limit</strong>" if m.over_limit else ""),
        )
        for m in fc.months
    ]
    warn = ""
    if fc.over_limit_months:
        months = ", ".join(escape(m) for m in fc.over_limit_months)
        warn = (
            f'<p class="warn" id="forecast-over">Its renewals would exceed the monthly limit in {months}.</p>'
        )
    return "<h2>Coming months with this purchase</h2>" + _rows(rows) + warn


def _terms_and_credential(f: ApprovalFacts) -> str:
    out = ""
    if f.terms_version:
        link = f'<a href="{escape(f.tos_url or "")}" rel="noreferrer" target="_blank">read them</a>'
        out += "<h2>Terms</h2>" + _rows([("Terms version", f"{escape(f.terms_version)} ({link})")])
    if f.scopes:
        ttl = f"{(f.credential_ttl_seconds or 0) // 60} minutes" if f.credential_ttl_seconds else ""
        out += "<h2>Credential the agent gets</h2>" + _rows(
            [("Scopes", escape(", ".join(f.scopes))), ("Lifetime", escape(ttl))]
        )
    return out


def _kind_section(f: ApprovalFacts) -> str:
    d = f.details
    if f.kind == "payment_method":
        return (
            "<h2>Payment method</h2><p>The card is entered on the Checkout page; the agent never sees it."
            " Approve to go there.</p>"
        )
    if f.kind == "oauth_consent":
        return (
            f"<h2>Account link</h2><p>You will be sent to {escape(str(d.get('provider', 'the provider')))}"
            " to approve the link. Approve to go there.</p>"
        )
    if f.kind == "spend_limit":
        return "<h2>Over the limit</h2>" + _rows(
            [
                ("This purchase", money(Money.model_validate(d["amount"])) if d.get("amount") else ""),
                ("Limit", money(Money.model_validate(d["limit"])) if d.get("limit") else ""),
                ("Already spent", money(Money.model_validate(d["committed"])) if d.get("committed") else ""),
            ]
        )
    if f.kind == "session_open":
        budget = money(Money.model_validate(d["budget"])) if d.get("budget") else ""
        return "<h2>The session</h2>" + _rows(
            [
                ("Agent", f'<span id="agent">{escape(str(d.get("agent", "")))}</span>'),
                ("Services it may buy", escape(", ".join(d.get("allowed_services", [])))),
                ("Budget", f'<span class="big" id="budget">{budget}</span>'),
                ("Lifetime", escape(f"{int(d.get('ttl_seconds', 0)) // 60} minutes")),
                ("Delegation depth", escape(str(d.get("max_depth", 0)))),
                ("Session id", f'<span class="code">{escape(str(d.get("session_id", "")))}</span>'),
            ]
        )
    if f.kind == "limit_change" and d.get("kind") in AGENT_LIMIT_WORDS:
        value = (
            f"{int(d.get('purchases_per_hour') or 0)} per rolling hour"
            if d.get("kind") == "velocity"
            else money(Money.model_validate(d["limit"]))
            if d.get("limit")
            else ""
        )
        return "<h2>The change</h2>" + _rows(
            [
                ("Limit", escape(AGENT_LIMIT_WORDS[str(d["kind"])])),
                ("Applies to", f'<span id="agent">{escape(str(d.get("agent") or "every agent"))}</span>'),
                ("New value", f'<span class="big" id="new-limit">{escape(value)}</span>'),
            ]
        )
    if f.kind == "limit_change":
        limit = money(Money.model_validate(d["limit"])) if d.get("limit") else ""
        return "<h2>The change</h2>" + _rows(
            [
                ("Applies to", escape(str(d.get("provider") or "every provider without its own limit"))),
                ("New monthly limit", f'<span class="big" id="new-limit">{limit}</span>'),
            ]
        )
    if f.kind == "agent_unfreeze":
        return "<h2>The agent</h2>" + _rows(
            [
                ("Agent", f'<span id="agent">{escape(str(d.get("agent", "")))}</span>'),
                ("Reason given", escape(str(d.get("reason") or ""))),
            ]
        )
    return ""


def information_fields(schema: dict[str, Any], prefix: str = "info") -> str:
    """Inputs for every property of a JSON schema object (nested objects become fieldsets)."""
    required = set(schema.get("required", []))
    out = []
    for name, prop in (schema.get("properties") or {}).items():
        field = f"{prefix}.{name}"
        label = escape(str(prop.get("title") or prop.get("description") or name))
        if prop.get("type") == "object":
            out.append(f"<fieldset><legend>{label}</legend>{information_fields(prop, field)}</fieldset>")
            continue
        req = " required" if name in required else ""
        if prop.get("enum"):
            opts = "".join(f"<option>{escape(str(o))}</option>" for o in prop["enum"])
            control = f'<select name="{escape(field)}"{req}>{opts}</select>'
        else:
            kind = "email" if prop.get("format") == "email" else "text"
            extra = f' maxlength="{int(prop["maxLength"])}"' if prop.get("maxLength") else ""
            control = f'<input type="{kind}" name="{escape(field)}" id="{escape(field)}"{extra}{req}>'
        out.append(f'<p><label for="{escape(field)}">{label}</label><br>{control}</p>')
    return "".join(out)


def approval_page(
    f: ApprovalFacts, *, view_hash: str, csrf: str, needs_code: bool, who: str, action: str
) -> str:
    title = TITLES.get(f.kind, "Approval")
    if f.kind == "limit_change" and f.details.get("kind") in AGENT_LIMIT_WORDS:
        title = "Change an agent's limit"
    info = ""
    if f.kind == "information":
        schema = f.details.get("schema") or {}
        info = f"<h2>What {escape(f.provider or 'the provider')} needs</h2>" + information_fields(schema)
    code = (
        '<p><label for="code">One-time code from your channel</label><br>'
        '<input type="text" name="code" id="code" autocomplete="one-time-code" required></p>'
        if needs_code
        else ""
    )
    footer = _rows(
        [
            ("Request id", f'<span class="code" id="request-id">{escape(f.request_id or "—")}</span>'),
            ("Approval id", f'<span class="code">{escape(f.approval_id)}</span>'),
            ("Asked", _when(f.requested_at)),
            ("Expires", _when(f.expires_at)),
            ("What you see (sha256)", f'<span class="code muted">{escape(view_hash)}</span>'),
        ]
    )
    body = (
        f'<h1 id="title">{escape(title)}</h1><p class="summary" id="summary">{escape(f.summary)}</p>'
        + _who(f)
        + _what(f)
        + _cost(f)
        + _cap(f)
        + _forecast(f)
        + _terms_and_credential(f)
        + _kind_section(f)
        + f'<form class="decide" method="post" action="{escape(action)}">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        f'<input type="hidden" name="view_hash" value="{escape(view_hash)}">'
        + info
        + code
        + '<p><label for="reason">Reason (optional)</label><br>'
        '<textarea name="reason" id="reason" rows="2" maxlength="500"></textarea></p>'
        '<button class="approve" type="submit" name="decision" value="approve" id="approve">Approve</button>'
        '<button class="deny" type="submit" name="decision" value="deny" id="deny">Deny</button>'
        "</form><h2>Reference</h2>" + footer
    )
    return layout(title, body, who=who)


def result_page(f: ApprovalFacts, decision: str, *, who: str, link: tuple[str, str] | None = None) -> str:
    if decision == "deny":
        title = "Denied"
        nxt = "Nothing is bought or changed; anything already done for this request is undone."
    else:
        title = "Approved"
        nxt = NEXT_STEP.get(f.kind, "The request continues.")
    action = ""
    if link is not None:
        href = escape(link[1])
        action = (
            f'<p><a class="action" id="next-link" href="{href}" rel="noreferrer">{escape(link[0])}</a></p>'
        )
    body = (
        f'<h1 id="title">{escape(title)}: {escape(TITLES.get(f.kind, f.kind))}</h1>'
        f'<p class="summary">{escape(f.summary)}</p><h2>What happens next</h2><p id="next">{escape(nxt)}</p>'
        + action
        + '<p><a href="/approvals">Your pending approvals</a></p>'
    )
    return layout(title, body, who=who)


def error_page(status: int, code: str, message: str, *, who: str | None = None) -> str:
    body = (
        f'<h1 id="title">Refused ({status})</h1><p class="code" id="error-code">{escape(code)}</p>'
        f'<p id="error-message">{escape(message)}</p><p><a href="/approvals">Your pending approvals</a> ·'
        ' <a href="/login">Log in</a></p>'
    )
    return layout("Refused", body, who=who)


def list_page(rows: Sequence[tuple[str, str, str, datetime]], *, who: str) -> str:
    """(approval id, kind, summary, expires)."""
    if not rows:
        items = "<p id='empty'>Nothing waits for you.</p>"
    else:
        items = (
            "<table>"
            + "".join(
                f'<tr><td><a href="/approve/{quote(a, safe="")}">{escape(TITLES.get(k, k))}</a></td>'
                f"<td>{escape(s)}</td><td class=muted>until {_when(e)}</td></tr>"
                for a, k, s, e in rows
            )
            + "</table>"
        )
    return layout("Pending approvals", f"<h1>Waiting for you</h1>{items}", who=who)


def login_page(*, message: str = "", login_id: str | None = None, email: str = "") -> str:
    if login_id is None:
        form = (
            '<form method="post" action="/login"><p><label for="email">Your e-mail</label><br>'
            f'<input type="email" name="email" id="email" required value="{escape(email)}"></p>'
            '<button type="submit" id="send">Send me a login code</button></form>'
        )
    else:
        form = (
            '<form method="post" action="/login/verify">'
            f'<input type="hidden" name="login_id" value="{escape(login_id)}">'
            f"<p>A code was sent to {escape(email)}.</p>"
            '<p><label for="code">Login code</label><br><input type="text" name="code" id="code" required '
            'autocomplete="one-time-code"></p><button type="submit" id="verify">Log in</button></form>'
        )
    note = f'<p class="warn" id="message">{escape(message)}</p>' if message else ""
    return layout("Log in", f"<h1>Log in to approve</h1>{note}{form}")


def inbox_page(email: str, messages: list[dict[str, Any]], rendered: list[tuple[str, str]]) -> str:
    """The dev inbox: each message as e-mail would have sent it, and the webhook's JSON."""
    import json

    items = []
    for m, (subject, body) in zip(messages, rendered, strict=True):
        link = (
            f'<p><a href="{escape(str(m["link"]))}" class="approval-link">open the approval page</a></p>'
            if m.get("link")
            else ""
        )
        code = (
            f'<p>code (dev inbox, webhook): <span class="code">{escape(str(m.get("code")))}</span></p>'
            if m.get("code")
            else ""
        )
        items.append(
            f"<section><h2>{escape(subject)}</h2>{link}{code}"
            f"<details><summary>e-mail body</summary><pre>{escape(body)}</pre></details>"
            "<details><summary>webhook JSON</summary>"
            f"<pre>{escape(json.dumps(m, indent=1, default=str))}</pre></details>"
            "</section>"
        )
    return layout(
        f"Dev inbox: {email}", f"<h1>Dev inbox for {escape(email)}</h1>" + ("".join(items) or "<p>empty</p>")
    )
