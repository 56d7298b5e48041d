"""A reusable leak scanner: where do canary secrets appear in what Temporal (and we) store?

`scan_for_canaries` looks at the RAW bytes, not a JSON rendering (where payload data is base64 and a
plaintext canary would hide): every history event serialized as protobuf, every payload's data and
metadata found inside those events, the describe response (search attributes, memo, pending activity
failures), the workflow and run ids, and any extra blobs the caller adds (captured logs, exception
reprs, files). Each canary is searched as text, hex and base64 (all three byte alignments), so an
encoding step cannot hide it. Child workflows and earlier runs (continue-as-new) are followed.

Sources overlap (an event and the payloads inside it), so a leak counts more than once: read the
counts as "zero or not". The API is stable; provisioning tests call it with their own ids and blobs:

    counts = await scan_for_canaries(client, ["provision-r1"], [canary], {"logs": log_bytes})
    assert counts == {canary: 0}
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client


@dataclass(frozen=True)
class Finding:
    source: str  # e.g. "provision-r1/run/<run id>/event/5", "extra/logs"
    canary: str
    form: str  # "text", "hex", "HEX", "base64", "base64url"
    count: int


def canary_forms(canary: str) -> dict[str, list[bytes]]:
    """The byte strings that betray `canary`: text, hex, and base64 at each of the 3 alignments."""
    raw = canary.encode()
    forms: dict[str, list[bytes]] = {
        "text": [raw],
        "hex": [raw.hex().encode()],
        "HEX": [raw.hex().upper().encode()],
        "base64": [],
        "base64url": [],
    }
    n = len(raw)
    for k in range(3):
        padded = b"\0" * k + raw
        # keep only the characters whose 6 bits all come from the canary
        start, end = -(-8 * k // 6), (8 * (k + n)) // 6
        std = base64.b64encode(padded)[start:end]
        forms["base64"].append(std)
        forms["base64url"].append(std.replace(b"+", b"-").replace(b"/", b"_"))
    return forms


def iter_payloads(message: Message) -> Iterator[Payload]:
    """Every `Payload` nested anywhere in `message` (maps and repeated fields included)."""
    if isinstance(message, Payload):
        yield message
        return
    for fd, value in message.ListFields():
        if fd.message_type is None:
            continue
        if fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].message_type is not None:
                for item in value.values():
                    yield from iter_payloads(item)
        elif fd.is_repeated:
            for item in value:
                yield from iter_payloads(item)
        else:
            yield from iter_payloads(value)


async def collect_blobs(client: Client, workflow_ids: list[str]) -> dict[str, bytes]:
    """The raw bytes stored for these workflows (all runs, and their child workflows), by source."""
    blobs: dict[str, bytes] = {}
    pending = list(dict.fromkeys(workflow_ids))
    seen: set[tuple[str, str | None]] = set()
    while pending:
        wid = pending.pop()
        runs: list[str | None] = [None]
        while runs:
            run_id = runs.pop()
            if (wid, run_id) in seen:
                continue
            seen.add((wid, run_id))
            desc = await client.get_workflow_handle(wid, run_id=run_id).describe()
            run = desc.run_id
            seen.add((wid, run))
            prefix = f"{wid}/run/{run}"
            blobs[f"{prefix}/workflow_id"] = wid.encode()
            blobs[f"{prefix}/run_id"] = run.encode()
            blobs[f"{prefix}/describe"] = desc.raw_description.SerializeToString()
            info = desc.raw_description.workflow_execution_info
            blobs[f"{prefix}/search_attributes"] = info.search_attributes.SerializeToString()
            blobs[f"{prefix}/memo"] = info.memo.SerializeToString()
            history = await client.get_workflow_handle(wid, run_id=run).fetch_history()
            for event in history.events:
                where = f"{prefix}/event/{event.event_id}"
                blobs[where] = event.SerializeToString()
                for i, payload in enumerate(iter_payloads(event)):
                    blobs[f"{where}/payload/{i}/data"] = payload.data
                    for key, value in payload.metadata.items():
                        blobs[f"{where}/payload/{i}/metadata/{key}"] = key.encode() + b"=" + value
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                    previous = event.workflow_execution_started_event_attributes.continued_execution_run_id
                    if previous:
                        runs.append(previous)
                elif event.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
                    pending.append(
                        event.start_child_workflow_execution_initiated_event_attributes.workflow_id
                    )
    return blobs


def find_in_blobs(blobs: Mapping[str, bytes], canaries: list[str]) -> list[Finding]:
    """Every (source, canary, form) with a non-zero occurrence count."""
    findings = []
    for canary in canaries:
        for form, needles in canary_forms(canary).items():
            for source, blob in blobs.items():
                count = sum(blob.count(needle) for needle in needles if needle)
                if count:
                    findings.append(Finding(source, canary, form, count))
    return findings


async def find_canaries(
    client: Client,
    workflow_ids: list[str],
    canaries: list[str],
    extra_blobs: Mapping[str, bytes] | None = None,
) -> list[Finding]:
    """Like `scan_for_canaries`, but says where each occurrence is (for assertion messages)."""
    blobs = await collect_blobs(client, workflow_ids)
    blobs.update({f"extra/{name}": blob for name, blob in (extra_blobs or {}).items()})
    return find_in_blobs(blobs, canaries)


async def scan_for_canaries(
    client: Client,
    workflow_ids: list[str],
    canaries: list[str],
    extra_blobs: Mapping[str, bytes] | None = None,
) -> dict[str, int]:
    """Occurrences of each canary (any form) in everything stored for `workflow_ids` + `extra_blobs`."""
    counts = dict.fromkeys(canaries, 0)
    for finding in await find_canaries(client, workflow_ids, canaries, extra_blobs):
        counts[finding.canary] += finding.count
    return counts
