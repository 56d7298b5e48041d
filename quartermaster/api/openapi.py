"""Print the API's OpenAPI 3.1 document: `python -m quartermaster.api.openapi > docs/api.openapi.json`."""

from __future__ import annotations

import json

from quartermaster.api.app import create_app


def document() -> str:
    return json.dumps(create_app(dev_routes=False).openapi(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(document(), end="")
