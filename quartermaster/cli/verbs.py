"""The verb modules, each with `register(subparsers)`. Add a module here to add verbs."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from quartermaster.cli import dev

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

REGISTRY: list[Register] = [dev.register]

from quartermaster.cli import secrets_verbs  # noqa: E402

REGISTRY.append(secrets_verbs.register)

from quartermaster.cli import audit_verbs  # noqa: E402

REGISTRY.append(audit_verbs.register)

from quartermaster.cli import provision_verbs  # noqa: E402

REGISTRY.append(provision_verbs.register)

from quartermaster.cli import billing_verbs  # noqa: E402

REGISTRY.append(billing_verbs.register)

from quartermaster.cli import session_verbs  # noqa: E402

REGISTRY.append(session_verbs.register)

from quartermaster.cli import auth_verbs  # noqa: E402

REGISTRY.append(auth_verbs.register)

from quartermaster.cli import doctor_verbs  # noqa: E402

REGISTRY.append(doctor_verbs.register)

from quartermaster.cli import mcp_verbs  # noqa: E402

REGISTRY.append(mcp_verbs.register)

from quartermaster.cli import plan_verbs  # noqa: E402

REGISTRY.append(plan_verbs.register)
from quartermaster.cli import link_verbs  # noqa: E402

REGISTRY.append(link_verbs.register)
