"""Races in the bridge, with the interleaving chosen by the test instead of hoped for.

A hypothesis state machine drives the real bridge (consumer loop, ordering, offsets, routing,
Temporal calls, DLQ writer) against stand-ins at its two client boundaries (tests/standins.py):
it produces payments, callbacks, cancels and bad records for a few payment ids, polls,
answers the pending Temporal calls in any order and any way (landed, refused before landing,
landed with the answer lost), ends workflow runs as the worker would (a run without its
payment becomes an orphan), rebalances and crashes the bridge (abandoned calls landing or not),
and lets the bridge pause when its in-flight slots are full (limit 4).

Invariants: a commit never passes a record whose effect is not in Temporal or the DLQ; the
bridge's bookkeeping stays within its in-flight limit; and once everything is answered, every
record is applied in effect (a payment in exactly one run; a callback or cancel delivered to
its payment's run, dead-lettered with the orphan run that held it, or refused because the
payment had completed) or in the DLQ with the right reason, and every offset is committed.
Fixed seed (the ``ci`` profile is derandomized); about 15 s.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from prometheus_client import CollectorRegistry

from bridge.consumer import Bridge
from bridge.metrics import BridgeMetrics
from bridge.routing import build_routes
from bridge.temporal_calls import TemporalCalls
from plumbing.dead_letters import DeadLetters
from plumbing.settings import Settings
from plumbing.temporal import Backoff
from schemas.codec import Codec
from schemas.events import CallbackStatus, PaymentCancelRequested
from schemas.ids import payment_workflow_id
from tests.standins import FakeGroupConsumer, RecordingSender, StandInTemporal, event_id_of
from tests.support import payment
from workflows.simulations.gateway import signed_callback

SECRET = "race-secret"
CODEC = Codec()
SETTINGS = Settings(
    PAYBRIDGE_TOPIC_PAYMENTS="payments",
    PAYBRIDGE_TOPIC_CALLBACKS="callbacks",
    PAYBRIDGE_TOPIC_CANCELS="cancels",
    PAYBRIDGE_ORPHAN_TIMEOUT="1h",
)
PAYMENT_IDS = [f"race-{n}" for n in range(3)]
MAX_INFLIGHT = 4


def no_backoff() -> Backoff:
    return Backoff(initial=0.0, cap=0.0)


class BridgeRaces(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.temporal = StandInTemporal()
        self.consumer = FakeGroupConsumer(partitions=2)
        self.sender = RecordingSender()
        self.produced: list[tuple[Any, str, str | None, str | None]] = []
        self.payments: dict[str, Any] = {}
        self.orphaned: set[str] = set()
        self.violations: list[str] = []
        self.events = 0
        self._check_commits()
        self.bridge = self._bridge()
        self._run(self._start())

    # -- plumbing of the machine -------------------------------------------------------

    def _bridge(self) -> Bridge:
        metrics = BridgeMetrics(CollectorRegistry())
        calls = TemporalCalls(self.temporal, task_queue="q", metrics=metrics, backoff=no_backoff)  # type: ignore[arg-type]
        return Bridge(
            self.consumer,  # type: ignore[arg-type]
            routes=build_routes(SETTINGS, calls, gateway_secret=SECRET, metrics=metrics),
            dead_letters=DeadLetters(self.sender, "dlq"),
            metrics=metrics,
            codec=CODEC,
            max_inflight=MAX_INFLIGHT,
            revoke_grace=0.0,
            pause_after=0.0,
            commit_timeout=1.0,
        )

    async def _start(self) -> None:
        self.bridge.subscribe()
        await self.consumer.assign()

    def _run(self, coro: Any) -> Any:
        async def then_settle() -> Any:
            result = await coro
            for _ in range(20):
                await asyncio.sleep(0)
            return result

        return self.loop.run_until_complete(then_settle())

    def _check_commits(self) -> None:
        commit = self.consumer.commit

        async def checked(offsets: dict[Any, Any]) -> None:
            for tp, meta in offsets.items():
                for record in self.consumer.log[tp][: getattr(meta, "offset", meta)]:
                    if not self._finished(record):
                        self.violations.append(
                            f"commit of {tp.topic}-{tp.partition}@{meta.offset} passes "
                            f"unfinished offset {record.offset}"
                        )
            await commit(offsets)

        self.consumer.commit = checked  # type: ignore[method-assign]

    def _finished(self, record: Any) -> bool:
        """Its effect is in Temporal, or it is in the DLQ."""
        for _topic, event_id, _pid in self._meta(record):
            if event_id is not None and event_id in self.temporal.resolved:
                return True
        return any(
            headers.get("dlq.source.topic") == record.topic.encode()
            and headers.get("dlq.source.partition") == str(record.partition).encode()
            and headers.get("dlq.source.offset") == str(record.offset).encode()
            for headers in (dict(h) for *_, h in self.sender.sent)
        )

    def _meta(self, record: Any) -> list[tuple[str, str | None, str | None]]:
        return [
            (kind, event_id, pid)
            for produced, kind, event_id, pid in self.produced
            if (produced.topic, produced.partition, produced.offset)
            == (record.topic, record.partition, record.offset)
        ]

    def _produce(self, topic: str, key: bytes | None, value: bytes, kind: str, event: Any) -> None:
        record = self.consumer.produce(topic, key, value)
        self.produced.append(
            (record, kind, getattr(event, "event_id", None), getattr(event, "payment_id", None))
        )

    # -- producing ---------------------------------------------------------------------

    @rule(
        records=st.lists(
            st.tuples(
                st.sampled_from(["payment", "callback", "cancel", "undecodable", "bad_signature"]),
                st.sampled_from(PAYMENT_IDS),
            ),
            min_size=1,
            max_size=3,
        )
    )
    def produce(self, records: list[tuple[str, str]]) -> None:
        for kind, pid in records:
            self._produce_one(kind, pid)

    def _produce_one(self, kind: str, pid: str) -> None:
        self.events += 1
        n = self.events
        if kind == "payment":
            if pid in self.payments:
                return
            event: Any = payment(1, payment_id=pid)
            self.payments[pid] = event
            self._produce("payments", pid.encode(), CODEC.encode(event), kind, event)
        elif kind == "callback":
            event = signed_callback(
                payment_id=pid,
                gateway_ref=f"gw-{n}",
                status=CallbackStatus.AUTHORIZED,
                secret=SECRET,
                event_id=f"cb-{n}",
            )
            self._produce("callbacks", pid.encode(), CODEC.encode(event), kind, event)
        elif kind == "cancel":
            event = PaymentCancelRequested(
                event_id=f"cancel-{n}",
                payment_id=pid,
                reason="race",
                requested_at=datetime.now(UTC),
            )
            self._produce("cancels", pid.encode(), CODEC.encode(event), kind, event)
        elif kind == "undecodable":
            self._produce("payments", pid.encode(), b"\x00" + os.urandom(20), kind, None)
        else:
            forged = signed_callback(
                payment_id=pid,
                gateway_ref="forged",
                status=CallbackStatus.DECLINED,
                secret="not-the-secret",
                event_id=f"forged-{n}",
            )
            self._produce("callbacks", pid.encode(), CODEC.encode(forged), kind, None)

    # -- the bridge and Temporal -------------------------------------------------------

    @rule()
    def poll(self) -> None:
        self._run(self.bridge._poll_once())

    @rule(
        picks=st.lists(st.integers(0, 50), min_size=1, max_size=4),
        how=st.sampled_from(["lands", "lands", "unavailable", "lost"]),
    )
    def answer(self, picks: list[int], how: str) -> None:
        if not self.temporal.pending:
            self.poll()
        for pick in picks:
            if self.temporal.pending:
                self.temporal.answer(self.temporal.pending[pick % len(self.temporal.pending)], how)
                self._run(asyncio.sleep(0))

    @rule(pid=st.sampled_from(PAYMENT_IDS))
    def worker_ends_the_run(self, pid: str) -> None:
        held = self.temporal.finish(payment_workflow_id(pid))
        for _name, arg in held or ():
            event_id = event_id_of(arg)
            if event_id is not None:
                self.orphaned.add(event_id)

    @rule()
    def commit(self) -> None:
        self._run(self.bridge.commit())

    @rule(crash=st.booleans(), land=st.booleans())
    def rebalance(self, crash: bool, land: bool) -> None:
        """A rebalance (the bridge releases its partitions), or a crash and a new bridge (it
        releases nothing); the calls it abandoned land on the server or not."""
        if crash:
            self._crash(land)
            return

        async def rebalance() -> None:
            await self.consumer.revoke()
            self.temporal.land_abandoned(land)
            await self.consumer.assign()

        self._run(rebalance())

    def _crash(self, land: bool) -> None:
        async def crash() -> None:
            tasks = [t for group in self.bridge._tasks.values() for t in group]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.temporal.land_abandoned(land)
            self.bridge = self._bridge()
            await self._start()

        self._run(crash())

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def commits_never_pass_an_unfinished_record(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def bookkeeping_stays_bounded(self) -> None:
        bridge = self.bridge
        tasks = sum(len(group) for group in bridge._tasks.values())
        assert tasks == bridge.inflight, (tasks, bridge.inflight)
        assert bridge.inflight <= MAX_INFLIGHT + 1, bridge.inflight
        assert len(bridge._tails) <= bridge.inflight
        assert len(self.temporal.pending) <= bridge.inflight

    def teardown(self) -> None:
        try:
            self._drain()
            self._check_outcome()
        finally:
            self.loop.close()

    def _drain(self) -> None:
        ends = self.consumer.end_offsets()
        for _ in range(200):
            self._run(self.bridge._poll_once())
            for _ in range(100):
                if not self.temporal.pending:
                    break
                self.temporal.answer(self.temporal.pending[0])
                self._run(asyncio.sleep(0))
            fetched = all(self.consumer._position.get(tp, 0) >= end for tp, end in ends.items())
            if fetched and self.bridge.inflight == 0:
                break
        for pid in PAYMENT_IDS:
            self.worker_ends_the_run(pid)
        self._run(self.bridge.commit())

    def _check_outcome(self) -> None:
        assert not self.violations, self.violations
        ends = self.consumer.end_offsets()
        committed = {tp: self.consumer.committed.get(tp, 0) for tp in ends}
        assert committed == ends, f"not every record was committed: {committed} != {ends}"
        dead = [dict(h) for *_, h in self.sender.sent]
        reasons = {
            (h["dlq.source.topic"], int(h["dlq.source.offset"]), int(h["dlq.source.partition"])): h[
                "dlq.reason"
            ].decode()
            for h in dead
        }
        for record, kind, event_id, pid in self.produced:
            where = (record.topic.encode(), record.offset, record.partition)
            if kind in ("undecodable", "bad_signature"):
                assert reasons.get(where) == kind, (kind, record, reasons.get(where))
                continue
            assert where not in reasons, f"a good {kind} went to the DLQ: {reasons[where]}"
            runs = self.temporal.runs[payment_workflow_id(pid)]
            with_payment = [run for run in runs if run.payment() is not None]
            if kind == "payment":
                assert len(with_payment) == 1, f"{pid}: {len(with_payment)} runs with the payment"
                continue
            delivered = {event_id_of(arg) for run in with_payment for _, arg in run.signals}
            assert (
                event_id in delivered
                or event_id in self.orphaned
                or event_id in self.temporal.closed_refused
            ), f"{kind} {event_id} of {pid} was lost: runs {runs}"


BridgeRaces.TestCase.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)
TestBridgeRaces = BridgeRaces.TestCase
