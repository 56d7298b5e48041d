"""The log redaction filter: known credential shapes, remembered secrets, Secret args, tracebacks."""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Callable

from models.secret import Secret
from quartermaster.logging_setup import (
    MAX_REMEMBERED,
    RedactingFilter,
    _remembered,
    configure_logging,
    redact,
    remember_secret,
)


def _logger_to(buffer: io.StringIO) -> logging.Logger:
    handler = logging.StreamHandler(buffer)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"qm.test.{secrets.token_hex(4)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return logger


def test_known_shapes_are_redacted() -> None:
    samples = {
        "sk_live_" + "a1B2" * 6: "stripe key",
        "whsec_" + "Zz9" * 8: "webhook secret",
        "spt_" + "1a2b" * 6: "shared payment token",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl": "jwt",
    }
    for value in samples:
        assert value not in redact(f"calling with {value} now"), samples[value]
    assert redact("Authorization: Bearer abcdefghijklmnop") == "Authorization: ***"
    assert redact("db password=hunter2hunter2 user=x") == "db password=*** user=x"
    assert redact('{"api_key": "k-12345678"}') == '{"api_key": "***"}'
    assert redact("postgres://app:s3cretpw@db:5432/x") == "***db:5432/x"
    assert redact("resource res_123 is ready, tokens=5") == "resource res_123 is ready, tokens=5"


def test_remembered_secret_and_secret_args_never_reach_the_handler() -> None:
    odd_token = "zq" + secrets.token_hex(10)  # no recognisable shape: only memory can catch it
    remember_secret(odd_token)
    buffer = io.StringIO()
    log = _logger_to(buffer)
    log.info("token is %s", odd_token)
    log.info("as Secret %s / %r", Secret("hidden-" + odd_token), Secret("x" * 10))
    try:
        raise RuntimeError(f"provider said: bad token {odd_token}")
    except RuntimeError:
        log.exception("call failed")
    out = buffer.getvalue()
    assert odd_token not in out
    assert "token is ***" in out
    assert "RuntimeError: provider said: bad token ***" in out  # the traceback stays useful


def test_configure_logging_redacts_for_every_handler() -> None:
    token = "sk_test_" + secrets.token_hex(12)
    buffer, other = io.StringIO(), io.StringIO()
    handler = configure_logging(stream=buffer)
    late = logging.StreamHandler(other)  # added after configure_logging, with no filter of its own
    logging.getLogger().addHandler(late)
    try:
        logging.getLogger("qm.test.any").warning("leaked %s", token, extra={"note": f"k={token}"})
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().removeHandler(late)
    assert token not in buffer.getvalue() + other.getvalue()
    assert "leaked ***" in buffer.getvalue()
    assert "leaked ***" in other.getvalue()


def _holds_remembered_redaction(redactor: Callable[[str], str]) -> bool:
    """What remembered-value redaction must do, with the memory full: a value inside a word or a URL is
    replaced, the longest of two values sharing a start wins, and a value that merely shares the first
    characters stays. Checked on `redactor`, so a broken one can be shown to fail it."""
    for _ in range(MAX_REMEMBERED):
        remember_secret(secrets.token_urlsafe(24))
    base = "zq" + secrets.token_hex(8)
    short, long_ = base, base + "XYZ123"
    remember_secret(short)
    remember_secret(long_)
    return (
        redactor(f"url=https://p.example/cb?code={long_}&x=1") == "url=https://p.example/cb?code=***&x=1"
        and redactor(f"a{short}b {long_}") == "a***b ***"
        and redactor(f"tok {base[:10]}-not-it") == f"tok {base[:10]}-not-it"
    )


def test_remembered_values_are_redacted_whatever_surrounds_them() -> None:
    assert _holds_remembered_redaction(redact)
    # a redactor that only looks at whole words lets a value inside a URL through
    assert not _holds_remembered_redaction(
        lambda text: " ".join("***" if w in _remembered else w for w in text.split(" "))
    )


def test_the_memory_is_bounded_and_forgets_the_oldest_first() -> None:
    first = "zq" + secrets.token_hex(10)
    remember_secret(first)
    assert redact(first) == "***"
    for _ in range(MAX_REMEMBERED):
        remember_secret(secrets.token_urlsafe(24))
    assert len(_remembered) == MAX_REMEMBERED
    assert redact(first) == first  # forgotten: its shape is not a known credential shape
