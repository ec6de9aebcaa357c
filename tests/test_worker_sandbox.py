"""The worker's sandbox compiles each workflow module once per process, and still isolates.

The SDK's sandbox imports a workflow's module afresh for every workflow run; without a bytecode
cache (``PYTHONDONTWRITEBYTECODE``) each of those imports compiled the module from source.
"""

from __future__ import annotations

import importlib.machinery
import sys
from collections import Counter
from types import CodeType

import pytest
import temporalio.workflow
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from workflows import worker
from workflows.payment import PaymentWorkflow


def sandboxed_runs(runner: SandboxedWorkflowRunner, n: int) -> None:
    """``n`` workflow instances, as the worker creates one per run (``prepare_workflow`` creates
    one with placeholder details)."""
    defn = temporalio.workflow._Definition.must_from_class(PaymentWorkflow)
    for _ in range(n):
        runner.prepare_workflow(defn)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each module's code is read or compiled (the loader's ``get_code``)."""
    counted: Counter[str] = Counter()
    original = importlib.machinery.SourceFileLoader.get_code

    def get_code(self: importlib.machinery.SourceFileLoader, fullname: str) -> CodeType | None:
        counted[fullname] += 1
        return original(self, fullname)

    monkeypatch.setattr(importlib.machinery.SourceFileLoader, "get_code", get_code)
    # As in a fresh process: the finder not yet installed, nothing compiled yet.
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if f is not worker._FINDER])
    monkeypatch.setattr(worker._CompiledOnce, "_code", {})
    return counted


async def test_the_worker_sandbox_compiles_the_payment_module_once(loads: Counter[str]) -> None:
    sandboxed_runs(worker.SANDBOX, 5)
    assert loads["workflows.payment"] == 1


async def test_the_sdk_sandbox_alone_loads_it_for_every_run(loads: Counter[str]) -> None:
    # What the worker did before: the cost the cache removes.
    sandboxed_runs(SandboxedWorkflowRunner(restrictions=worker.SANDBOX.restrictions), 5)
    assert loads["workflows.payment"] == 5


async def test_each_run_still_gets_a_module_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # The module body still runs in every sandbox: module state is not shared between runs.
    made = []
    create = SandboxedWorkflowRunner.create_instance

    def keep(self: SandboxedWorkflowRunner, det: WorkflowInstanceDetails) -> WorkflowInstance:
        made.append(create(self, det))
        return made[-1]

    monkeypatch.setattr(SandboxedWorkflowRunner, "create_instance", keep)
    sandboxed_runs(worker.SANDBOX, 2)
    classes = [run.globals_and_locals["__temporal_in_sandbox"].instance._defn.cls for run in made]
    assert len(classes) == 2
    assert classes[0] is not classes[1]
    assert PaymentWorkflow not in classes
