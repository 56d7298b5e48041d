"""The worker's workflow runner: Temporal's sandbox, with its two hot paths made cheaper.

For every payload sequence it encodes or decodes (each activity input and result, each memo field,
each local-activity marker), the Python SDK asks the workflow instance for the payload's
serialization context. In the sandboxed runner each of those questions is a round trip into the
sandbox: the SDK compiles a small code string, installs the sandbox's import hooks, `exec`s the
string, and removes the hooks again. The answer itself is a dictionary lookup on the instance's
pending activities (`_WorkflowInstanceImpl.get_serialization_context`), which runs no workflow
code and imports nothing. Profiling an agent's provisioning through the API (`bench.profile --api`)
showed these round trips at about 17% of the worker process's CPU (docs/performance.md).

`QuartermasterRunner` asks the sandboxed instance directly, without the round trip. Activations
(the workflow code itself) still run inside the sandbox with every restriction, exactly as before;
only the two read-only lookups skip the `exec`. Those lookups rely on private parts of
`temporalio.worker.workflow_sandbox` (`_Instance` and its `globals_and_locals`), so the runner checks
they are there when it is built and otherwise falls back to the stock sandboxed runner
(`uses_direct_lookups()` says which one is in use; tests/test_workflow_runner.py checks both the
answers and that the direct path is taken with the installed SDK).

The sandbox also re-imports a workflow's module for every new workflow run, so each run gets fresh
module globals: that isolation is the point of the sandbox. Through the standard import machinery,
each re-import also looks the file up again and unmarshals its `.pyc` into a new set of code objects:
for `workflows/provision.py` about 80 KiB per parked request, half of what a waiting request cost the
worker (tracemalloc, docs/performance.md). `SharedWorkflowCode` is a `sys.meta_path` finder for the
workflow packages that compiles each module once per process and hands the sandbox that same
(immutable) code object for every re-import; the module is still executed afresh into new globals
each time. A side effect that is wanted: a running worker keeps executing the code it started with,
even if the files on disk change under it.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Sequence
from types import CodeType, ModuleType
from typing import Any

from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

try:  # private: checked here, and the stock runner is used when it changes
    from temporalio.worker.workflow_sandbox._runner import _Instance
except ImportError:  # pragma: no cover - depends on the installed SDK
    _Instance = None  # type: ignore[assignment,misc]

#: the name the SDK gives the in-sandbox object whose methods answer the lookups
_IN_SANDBOX = "__temporal_in_sandbox"


def _supported() -> bool:
    if _Instance is None:
        return False
    return all(
        callable(getattr(_Instance, name, None))
        for name in ("get_serialization_context", "get_external_store_context", "_run_code")
    )


if _Instance is not None:

    class _DirectLookupInstance(_Instance):
        """A sandboxed instance whose two context lookups call the in-sandbox object directly."""

        def _in_sandbox(self) -> Any:
            return self.globals_and_locals.get(_IN_SANDBOX)

        def get_serialization_context(self, command_info: Any) -> Any:
            target = self._in_sandbox()
            if target is None:  # not created yet, or the SDK changed its layout: the stock path
                return super().get_serialization_context(command_info)
            return target.get_serialization_context(command_info)

        def get_external_store_context(self, command_info: Any) -> Any:
            target = self._in_sandbox()
            if target is None:
                return super().get_external_store_context(command_info)
            return target.get_external_store_context(command_info)


@dataclasses.dataclass(frozen=True)
class QuartermasterRunner(SandboxedWorkflowRunner):
    """The sandboxed runner, with direct serialization-context lookups where the SDK allows them."""

    direct_lookups: bool = True

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        if self.direct_lookups and _supported():
            return _DirectLookupInstance(det, self.runner_class, self.restrictions)
        return super().create_instance(det)

    def uses_direct_lookups(self) -> bool:
        return self.direct_lookups and _supported()


class _SharedCodeLoader(importlib.machinery.SourceFileLoader):
    """Executes a module from the code object compiled the first time (see the module docstring)."""

    def __init__(self, fullname: str, path: str, codes: dict[str, CodeType], lock: threading.Lock) -> None:
        super().__init__(fullname, path)
        self._codes = codes
        self._lock = lock

    def get_code(self, fullname: str) -> CodeType:
        code = self._codes.get(self.path)
        if code is None:
            with self._lock:
                code = self._codes.get(self.path)
                if code is None:
                    compiled = super().get_code(fullname)
                    assert compiled is not None
                    code = self._codes[self.path] = compiled
        return code


class SharedWorkflowCode(importlib.abc.MetaPathFinder):
    """A finder for the workflow packages' modules whose loader reuses one code object per file."""

    def __init__(self) -> None:
        self.packages: set[str] = set()
        self._codes: dict[str, CodeType] = {}
        #: module name -> (file, package search locations or None), from the first lookup
        self._where: dict[str, tuple[str, list[str] | None]] = {}
        self._lock = threading.Lock()

    def compiled(self) -> int:
        """How many modules have a shared code object (tests, diagnostics)."""
        return len(self._codes)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in self.packages:
            return None
        where = self._where.get(fullname)
        if where is None:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
                return spec  # a namespace package, an extension: the normal machinery
            locations = list(spec.submodule_search_locations or []) or None
            where = self._where[fullname] = (str(spec.origin), locations)
        origin, locations = where
        loader = _SharedCodeLoader(fullname, origin, self._codes, self._lock)
        # a fresh spec each time: the import system marks a spec while it initialises a module
        return importlib.util.spec_from_file_location(
            fullname, origin, loader=loader, submodule_search_locations=locations
        )


#: the process's one finder (installed first on sys.meta_path by `share_workflow_code`)
SHARED_CODE = SharedWorkflowCode()


def share_workflow_code(*packages: str) -> SharedWorkflowCode:
    """Serve these top-level packages' modules from shared code objects (idempotent)."""
    SHARED_CODE.packages.update(packages)
    if SHARED_CODE not in sys.meta_path:
        sys.meta_path.insert(0, SHARED_CODE)
    return SHARED_CODE


def workflow_runner(
    passthrough: tuple[str, ...],
    *,
    direct_lookups: bool = True,
    shared_code: Sequence[str] = ("workflows",),
) -> QuartermasterRunner:
    """The runner every Quartermaster worker uses (and the benchmarks' floor, for the same settings):
    direct context lookups, and the `shared_code` packages' modules compiled once per process."""
    if shared_code:
        share_workflow_code(*shared_code)
    restrictions = SandboxRestrictions.default.with_passthrough_modules(*passthrough)
    return QuartermasterRunner(restrictions=restrictions, direct_lookups=direct_lookups)
