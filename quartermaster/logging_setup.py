"""Logging with secrets redacted: one filter for the worker, the CLI and the codec server.

A log line is redacted when it contains (1) a value shaped like a known credential (Stripe keys,
webhook secrets, shared payment tokens, bearer tokens, JWTs, private keys, ``password=...``), or (2)
a value this process has handled as a `Secret` (the payload codec remembers every secret it seals or
unseals, so even tokens with no recognisable shape are caught). `Secret` objects passed as log
arguments already print as ``***``. The filter rewrites the message, the formatted traceback and
string `extra` fields, so no handler downstream ever sees the plaintext.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections import OrderedDict
from typing import IO, Any

from models.secret import REDACTED

#: credential shapes redacted wherever they appear (whole match replaced)
SECRET_PATTERNS: list[re.Pattern[str]] = [
    re.compile(r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z_]{8,}"),
    re.compile(r"\bwhsec_[0-9A-Za-z+/=_]{8,}"),
    re.compile(r"\bspt_[0-9A-Za-z_]{8,}"),
    re.compile(r"\b(?:pi|seti|cs_test|cs_live)_[0-9A-Za-z]+_secret_[0-9A-Za-z]+"),
    re.compile(r"\bqm(?:tok|sk|pat)_[0-9A-Za-z_-]{8,}"),
    re.compile(r"\beyJ[0-9A-Za-z_-]{4,}\.eyJ[0-9A-Za-z_-]{4,}\.[0-9A-Za-z_-]*"),
    re.compile(r"(?i)\bbearer\s+[0-9A-Za-z._~+/-]{8,}=*"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)\b(?:postgres(?:ql)?|mysql|redis|amqp|mongodb(?:\+srv)?)://[^\s:/@]+:[^\s@/]+@"),
]
#: ``name=value`` / ``name: value`` where the name says secret: the value is redacted, the name kept
_NAMED_VALUE = re.compile(
    r"(?i)\b((?:[a-z0-9]+[_-])*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)"
    r"[\"']?\s*[=:]\s*[\"']?)([^\s\"',;&}]{6,})"
)
#: shortest remembered value: shorter strings would redact ordinary words
MIN_REMEMBERED_LENGTH = 8
MAX_REMEMBERED = 4096

_lock = threading.Lock()
_remembered: OrderedDict[str, None] = OrderedDict()
#: the remembered values by their first MIN_REMEMBERED_LENGTH characters, each list longest first
_by_prefix: dict[str, list[str]] = {}
_extra_patterns: list[re.Pattern[str]] = []


def remember_secret(value: str) -> None:
    """Redact `value` from every later log line of this process (bounded, oldest forgotten first)."""
    if not isinstance(value, str) or len(value) < MIN_REMEMBERED_LENGTH:
        return
    with _lock:
        if value in _remembered:
            _remembered.move_to_end(value)
            return
        _remembered[value] = None
        same = _by_prefix.setdefault(value[:MIN_REMEMBERED_LENGTH], [])
        same.append(value)
        same.sort(key=len, reverse=True)
        while len(_remembered) > MAX_REMEMBERED:
            oldest, _ = _remembered.popitem(last=False)
            _forget(oldest)


def _forget(value: str) -> None:
    prefix = value[:MIN_REMEMBERED_LENGTH]
    same = _by_prefix.get(prefix, [])
    same.remove(value)
    if not same:
        del _by_prefix[prefix]


def add_secret_pattern(pattern: str) -> None:
    """Register another credential shape (a provider's token format) for redaction."""
    with _lock:
        _extra_patterns.append(re.compile(pattern))


def _redact_remembered(text: str) -> str:
    """Every remembered value in `text` replaced by ``***``, leftmost first and the longest one at a
    position. One dictionary lookup per position of the text, however many values are remembered (a
    regular expression of every value cost 231 ms to compile and 0.4 ms a line at 4,096: performance.md)."""
    n = MIN_REMEMBERED_LENGTH
    with _lock:
        if not _by_prefix or len(text) < n:
            return text
        index = _by_prefix
        out: list[str] = []
        start = i = 0
        last = len(text) - n
        while i <= last:
            same = index.get(text[i : i + n])
            hit = next((v for v in same if text.startswith(v, i)), None) if same else None
            if hit is None:
                i += 1
                continue
            out += (text[start:i], REDACTED)
            i = start = i + len(hit)
    if not out:
        return text
    out.append(text[start:])
    return "".join(out)


def redact(text: str) -> str:
    """`text` with every known secret shape and every remembered secret value replaced by ``***``."""
    text = _redact_remembered(text)
    for pattern in (*SECRET_PATTERNS, *_extra_patterns):
        text = pattern.sub(REDACTED, text)
    return _NAMED_VALUE.sub(lambda m: m.group(1) + REDACTED, text)


_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Rewrites a record in place so no handler can emit a secret; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_qm_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed %-format must not hide the line, nor crash logging
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            # formatters render exc_text; dropping exc_info keeps the raw exception away from them
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(record.__dict__.items()):
            if name not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, name, redact(value))
        record._qm_redacted = True
        return True


_installed = False


def _install_record_factory(flt: RedactingFilter) -> None:
    """Redact at record creation, so handlers added later (pytest's, a library's) get clean records."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        flt.filter(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def configure_logging(
    level: int | str = logging.INFO, *, stream: IO[str] | None = None, fmt: str | None = None
) -> logging.Handler:
    """Root logging for a Quartermaster process, with secrets redacted on every handler.

    Adds one stream handler (stderr by default) and returns it; safe to call more than once (each call
    adds the handler it returns, and the redaction is installed once).
    """
    flt = RedactingFilter()
    _install_record_factory(flt)
    root = logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(fmt or "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    for h in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(flt)
    root.setLevel(level)
    return handler


#: libraries that log a line for every HTTP call they make
HTTP_CLIENT_LOGGERS = ("httpx", "httpcore", "stripe")


def quiet_http_client_logs() -> None:
    """A service process's console: warnings and errors of the HTTP clients, not a line per call
    (the worker's provider and Stripe calls would drown the approvals; each line also costs CPU
    through the redaction filter)."""
    for name in HTTP_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
