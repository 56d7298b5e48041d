"""Typed search attributes, declared once. Their values are stored unencrypted: no emails, no secrets."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

QM_STATE = SearchAttributeKey.for_keyword("QmState")
QM_AWAITING = SearchAttributeKey.for_keyword("QmAwaiting")
QM_PROVIDER = SearchAttributeKey.for_keyword("QmProvider")
QM_SERVICE = SearchAttributeKey.for_keyword("QmService")
QM_AGENT = SearchAttributeKey.for_keyword("QmAgent")
#: opaque principal id (HMAC of the email), never the email itself
QM_PRINCIPAL = SearchAttributeKey.for_keyword("QmPrincipal")
QM_SESSION = SearchAttributeKey.for_keyword("QmSession")
QM_RESOURCE = SearchAttributeKey.for_keyword("QmResource")

ALL = (QM_STATE, QM_AWAITING, QM_PROVIDER, QM_SERVICE, QM_AGENT, QM_PRINCIPAL, QM_SESSION, QM_RESOURCE)


class State:
    """Values of QmState."""

    RUNNING = "RUNNING"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    COMPENSATED = "COMPENSATED"
