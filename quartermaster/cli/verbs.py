"""The verb modules, each with `register(subparsers)`. Add a module here to add verbs."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from quartermaster.cli import dev

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

REGISTRY: list[Register] = [dev.register]
