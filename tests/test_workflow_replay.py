"""Recorded histories of earlier PaymentWorkflow versions replay on the current code.

``payment_slice_*`` were recorded from the foundation slice (validate -> publish) before the
saga replaced it behind ``workflow.patched("payment-saga-v2")``; ``payment_saga_*`` from the
saga itself (v2); ``payment_v3_*`` from the third version, whose changes of commands sit
behind ``payment-saga-v3-void-after-authorize`` and ``payment-saga-v3-temporal-cancel`` (see
tests/histories/record.py). Without its patches a version's histories no longer replay: the
last tests prove that the check can fail.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.payment import SAGA_PATCH, TEMPORAL_CANCEL_PATCH, VOID_AFTER_AUTHORIZE_PATCH
from workflows.worker import FRAUD_WORKFLOWS, SANDBOX, WORKFLOWS

HISTORIES = Path(__file__).parent / "histories"
SLICE = sorted(HISTORIES.glob("payment_slice_*.json"))
SAGA = sorted(HISTORIES.glob("payment_saga_*.json"))
V3 = sorted(HISTORIES.glob("payment_v3_*.json"))
V3_PATCHES = (TEMPORAL_CANCEL_PATCH, VOID_AFTER_AUTHORIZE_PATCH)
# The v3 histories whose commands differ from what v2 would have done: cancels of both kinds.
V3_CHANGED = [path for path in V3 if "cancel" in path.stem]
# Runs started by an early callback (tests/histories/record_early.py): one waited and ran the
# saga, one dead-lettered what it held and failed.
EARLY = sorted(HISTORIES.glob("payment_early_*.json"))


def load(path: Path) -> WorkflowHistory:
    data = json.loads(path.read_text())
    return WorkflowHistory.from_json(f"payment-{path.stem}", data)


def replayer() -> Replayer:
    return Replayer(
        workflows=[*WORKFLOWS, *FRAUD_WORKFLOWS],
        data_converter=pydantic_data_converter,
        workflow_runner=SANDBOX,  # the worker's own sandbox settings
    )


def patch_markers(path: Path) -> list[str]:
    """The patch ids recorded in a history (the marker carries the id as a JSON payload)."""
    found = []
    for event in json.loads(path.read_text())["events"]:
        marker = event.get("markerRecordedEventAttributes")
        if marker and marker["markerName"] == "core_patch":
            payload = marker["details"]["patch-data"]["payloads"][0]["data"]
            found.append(json.loads(base64.b64decode(payload))["id"])
    return found


def test_histories_of_every_version_are_kept() -> None:
    assert len(SLICE) >= 2 and len(SAGA) >= 3 and len(V3) >= 6 and len(V3_CHANGED) >= 3
    assert all(patch_markers(path) == [] for path in SLICE)
    assert all(patch_markers(path) == [SAGA_PATCH] for path in SAGA)
    assert all(
        patch_markers(path) == [SAGA_PATCH, TEMPORAL_CANCEL_PATCH, VOID_AFTER_AUTHORIZE_PATCH]
        for path in V3
    )
    assert len(EARLY) >= 2


@pytest.mark.parametrize("path", SLICE + SAGA + V3 + EARLY, ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path) -> None:
    result = await replayer().replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


@pytest.mark.parametrize("path", SLICE, ids=lambda p: p.stem)
async def test_slice_history_fails_to_replay_without_the_patch(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the code would be with the patch removed: the saga for every execution.
    monkeypatch.setattr(workflow, "patched", lambda patch_id, **_: True)
    result = await replayer().replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert (
        "nondeterminism" in str(result.replay_failure).lower()
        or "Nondeterminism" in type(result.replay_failure).__name__
    )


@pytest.mark.parametrize("path", V3_CHANGED, ids=lambda p: p.stem)
async def test_v3_history_fails_to_replay_without_its_patches(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # v2's branches where v3's patches stand (each patch still consumes its marker): the
    # commands of these histories differ, so replay must fail on them, not on a marker.
    patched = workflow.patched
    monkeypatch.setattr(
        workflow, "patched", lambda patch_id, **_: patched(patch_id) and patch_id not in V3_PATCHES
    )
    result = await replayer().replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is not None
    failure = str(result.replay_failure)
    # Core reports a command mismatch as a nondeterminism error or, for an activity whose
    # cancel the history has and the code does not, as an invalid machine transition.
    assert "patch marker" not in failure, failure
    assert "nondeterminism" in failure.lower() or "in workflow machines" in failure, failure
