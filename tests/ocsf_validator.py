"""Validate OCSF events against the real OCSF schema, offline.

The schema is the OCSF project's own export of each released version, shipped inside the
`ocsf-json-schema` wheel (from PyPI; nothing is downloaded at test time), which also turns one class
plus the profiles an event declares into a JSON Schema (draft 2020-12): required attributes, types,
enums, `additionalProperties: false`, and the class's `at_least_one` / `just_one` constraints. An
attribute of a profile the event does not name in `metadata.profiles` is not in that schema, so it
is refused like any unknown attribute (the rule the 1.3 export broke with `cloud`).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

OCSF_VERSION = "1.7.0"


@cache
def _schema(version: str) -> OcsfJsonSchemaEmbedded:
    return OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))


@cache
def _validator(version: str, class_uid: int, profiles: tuple[str, ...]) -> jsonschema.Draft202012Validator:
    schema = _schema(version)
    class_schema = schema.get_class_schema(schema.lookup_class_name_from_uid(class_uid), list(profiles))
    jsonschema.Draft202012Validator.check_schema(class_schema)
    return jsonschema.Draft202012Validator(class_schema)


def ocsf_errors(event: dict[str, Any], *, version: str = OCSF_VERSION) -> list[str]:
    """Every way `event` breaks OCSF `version` (empty when valid), each as `path: message`."""
    metadata = event.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("version") != version:
        return [f"metadata.version: not {version}"]
    class_uid = event.get("class_uid")
    if not isinstance(class_uid, int):
        return ["class_uid: missing"]
    try:
        validator = _validator(version, class_uid, tuple(sorted(metadata.get("profiles", []))))
    except (KeyError, ValueError) as exc:
        return [f"class_uid: {class_uid} is not an OCSF {version} class ({exc})"]
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(event)'}: {e.message}"
        for e in validator.iter_errors(event)
    ]
    type_uid = event.get("type_uid")
    if type_uid != class_uid * 100 + event.get("activity_id", -1):
        errors.append(f"type_uid: {type_uid} is not class_uid * 100 + activity_id")
    return errors
