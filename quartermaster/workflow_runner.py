"""The worker's workflow runner: Temporal's sandbox, with the serialization-context lookups made direct.

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
"""

from __future__ import annotations

import dataclasses
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


def workflow_runner(passthrough: tuple[str, ...], *, direct_lookups: bool = True) -> QuartermasterRunner:
    """The runner every Quartermaster worker uses (and the benchmarks' floor, for the same settings)."""
    restrictions = SandboxRestrictions.default.with_passthrough_modules(*passthrough)
    return QuartermasterRunner(restrictions=restrictions, direct_lookups=direct_lookups)
