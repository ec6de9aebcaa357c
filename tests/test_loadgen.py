"""`paybridge loadgen`: every payment it sends is matched to exactly one outcome."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from plumbing.settings import Settings
from schemas.events import OutcomeStatus, PaymentOutcome
from schemas.ids import outcome_event_id
from tests.support import Stack, running_bridge, running_worker
from tools.cli import main
from tools.load.mix import Mix, PaymentFactory
from tools.load.stats import Tracker

# Short enough for a loaded 2-core machine: a payment runs the whole saga (~10 activities).
COUNT = 50
# Intents whose outcome does not depend on the gateway or the saga: rejected by validation.
MIX = "unknown_account=0.1,unsupported_currency=0.05,decline=0.05,gateway_error=0,cancel=0,json=0.2"


def _env(settings: Settings) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "PAYBRIDGE_TOPIC_PAYMENTS": settings.topic_payments,
        "PAYBRIDGE_TOPIC_CANCELS": settings.topic_cancels,
        "PAYBRIDGE_TOPIC_OUTCOMES": settings.topic_outcomes,
    }


async def test_short_run_matches_every_payment_once(stack: Stack, tmp_path: Path) -> None:
    report_path, chart_path = tmp_path / "report.json", tmp_path / "chart.png"
    args = ["loadgen", "--count", str(COUNT), "--rate", "100", "--mix", MIX, "--seed", "7"]
    args += ["--timeout", "80s", "--report", str(report_path), "--chart", str(chart_path)]

    async with running_worker(stack), running_bridge(stack):
        result = await asyncio.to_thread(
            CliRunner().invoke, main, args, env=_env(stack.settings), catch_exceptions=False
        )

    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["sent"] == report["completed"] == COUNT
    assert report["missing"] == 0
    assert report["duplicates"] == {"by_payment_id": 0, "by_event_id": 0}
    assert sum(report["by_status"].values()) == COUNT
    for intent in ("unknown_account", "unsupported_currency"):
        assert set(report["by_intent"].get(intent, {})) <= {"REJECTED"}
    rejected = sum(sum(report["by_intent"].get(i, {}).values()) for i in ("unknown_account",))
    assert rejected > 0  # the seed makes some
    assert report["latency"]["p99_ms"] >= report["latency"]["p50_ms"] > 0
    assert sum(row["produced"] for row in report["timeline"]) == COUNT
    assert sum(row["completed"] for row in report["timeline"]) == COUNT
    assert chart_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "missing" in result.output and "latency p99" in result.output


async def test_missing_outcomes_exit_non_zero(settings: Settings) -> None:
    # No bridge and no worker: nothing ever completes.
    args = ["loadgen", "--count", "5", "--timeout", "1s", "--quiet"]
    result = await asyncio.to_thread(CliRunner().invoke, main, args, env=_env(settings))
    assert result.exit_code == 1
    assert "FAILED: 5 missing" in result.output


def test_duplicates_are_counted_by_payment_id_and_by_event_id() -> None:
    factory = PaymentFactory(Mix.parse("none"), run_id="t", seed=1)
    planned = [factory.next() for _ in range(3)]
    tracker = Tracker()
    for p in planned:
        tracker.record_sent(p)

    def outcome(n: int, status: OutcomeStatus) -> PaymentOutcome:
        payment = planned[n].payment
        return PaymentOutcome(
            event_id=outcome_event_id(payment.payment_id, status),
            payment_id=payment.payment_id,
            status=status,
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            workflow_id=f"payment-{payment.payment_id}",
            created_at=payment.created_at,
            completed_at=datetime.now(UTC),
        )

    tracker.record_outcome(outcome(0, OutcomeStatus.SUCCEEDED))
    tracker.record_outcome(outcome(0, OutcomeStatus.SUCCEEDED))  # re-published copy
    tracker.record_outcome(outcome(1, OutcomeStatus.SUCCEEDED))
    tracker.record_outcome(outcome(1, OutcomeStatus.FAILED))  # a second, different outcome
    report = tracker.report()
    assert report["duplicates"] == {"by_payment_id": 2, "by_event_id": 1}
    assert report["missing"] == 1 and report["missing_ids"] == [planned[2].payment.payment_id]
    assert report["by_status"] == {"SUCCEEDED": 2}
    assert not report["ok"]


def test_mix_parse_and_shares() -> None:
    assert Mix.parse("decline=0.5,cancel=0.1").decline == 0.5
    assert Mix.parse("none").intent_shares() == dict.fromkeys(Mix().intent_shares(), 0.0)
    factory = PaymentFactory(Mix.parse("none,unknown_account=1"), run_id="t", seed=2)
    made = [factory.next() for _ in range(20)]
    assert all(p.intent == "unknown_account" for p in made)
    assert all(not p.payment.account_id.startswith("acct-0") for p in made)
    cancels = PaymentFactory(Mix.parse("none,cancel=1"), run_id="t", seed=3).next()
    assert cancels.cancel is not None and cancels.cancel.payment_id == cancels.payment.payment_id
