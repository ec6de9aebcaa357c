"""The bridge's consumer loop under conditions a test sets up exactly: pause drift, commits
that hang or fail, a record that can be neither applied nor dead-lettered, shutdown with calls
that never return. Kafka and Temporal are the stand-ins of tests/standins.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import CollectorRegistry

from bridge.consumer import Bridge
from bridge.metrics import BridgeMetrics
from bridge.routing import build_routes
from bridge.temporal_calls import TemporalCalls
from plumbing.dead_letters import DeadLetters
from plumbing.temporal import Backoff
from schemas.codec import Codec
from schemas.events import CallbackStatus
from tests.standins import FakeGroupConsumer, RecordingSender, StandInTemporal
from tests.support import payment
from tests.test_bridge_races import SETTINGS
from workflows.simulations.gateway import signed_callback

CODEC = Codec()
SECRET = "race-secret"


class Rig:
    def __init__(self, *, max_inflight: int = 2, answer_at_once: bool = False, **bridge: Any):
        self.temporal = StandInTemporal(answer_at_once=answer_at_once)
        self.kafka = FakeGroupConsumer(partitions=1)
        self.sender = RecordingSender()
        metrics = BridgeMetrics(CollectorRegistry())
        calls = TemporalCalls(
            self.temporal,  # type: ignore[arg-type]
            task_queue="q",
            metrics=metrics,
            backoff=lambda: Backoff(initial=0.0, cap=0.0),
        )
        self.bridge = Bridge(
            self.kafka,  # type: ignore[arg-type]
            routes=build_routes(SETTINGS, calls, gateway_secret=SECRET, metrics=metrics),
            dead_letters=DeadLetters(self.sender, "dlq"),
            metrics=metrics,
            codec=CODEC,
            max_inflight=max_inflight,
            **{"revoke_grace": 0.0, "pause_after": 0.0, **bridge},
        )

    async def start(self) -> None:
        self.bridge.subscribe()
        await self.kafka.assign()

    async def settle(self) -> None:
        for _ in range(30):
            await asyncio.sleep(0)

    async def poll(self) -> None:
        await self.bridge._poll_once()
        await self.settle()

    def callback(self, n: int) -> Any:
        event = signed_callback(
            payment_id=f"p{n}",
            gateway_ref=f"gw-{n}",
            status=CallbackStatus.AUTHORIZED,
            secret=SECRET,
            event_id=f"cb-{n}",
        )
        return self.kafka.produce("callbacks", event.payment_id.encode(), CODEC.encode(event))

    def payment(self, n: int) -> Any:
        event = payment(n, payment_id=f"p{n}")
        return self.kafka.produce("payments", event.payment_id.encode(), CODEC.encode(event))

    async def answer_all(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            if not self.temporal.pending:
                return
            self.temporal.answer(self.temporal.pending[0])
            await self.settle()


async def test_records_a_poll_returns_are_never_dropped() -> None:
    """Break 7 of issue 12: the bridge kept its own list of paused partitions beside the
    consumer's and threw away whatever a poll returned while it believed them paused, so any
    drift between the two (a new assignment unpauses partitions in aiokafka; one can be
    assigned while the poll waits) skipped records and committed past them.

    Here the bridge is saturated (two payments whose calls hang) and pauses, but the callbacks
    partition stays fetchable, as a partition assigned during the poll would be. Every
    callback the polls return must reach its payment's run, and the commits the end."""
    rig = Rig(max_inflight=2)
    await rig.start()
    rig.payment(1)
    rig.payment(2)
    await rig.poll()  # both payments in flight, their calls unanswered: saturated
    rig.kafka.unpausable = {tp for tp in rig.kafka.assignment() if tp.topic == "callbacks"}
    rig.callback(1)
    rig.callback(2)
    for _ in range(3):
        await rig.poll()  # paused, yet the callbacks come back: they must not be lost
    for _ in range(30):
        await rig.answer_all()
        await rig.poll()
    await rig.bridge.commit()
    delivered = {
        arg.callback.event_id
        for runs in rig.temporal.runs.values()
        for run in runs
        if run.payment() is not None
        for name, arg in run.signals
        if name == "gateway_callback"
    }
    assert delivered == {"cb-1", "cb-2"}
    assert {tp.topic: offset for tp, offset in rig.kafka.committed.items()} == {
        "callbacks": 2,
        "payments": 2,
    }


async def test_a_hanging_commit_gives_up_and_the_next_one_goes_through() -> None:
    """Break 8 of issue 12: an offset commit had no time limit and held the commit lock, so a
    commit the broker never answers hung every later commit and the shutdown."""
    rig = Rig(max_inflight=10, answer_at_once=True, commit_timeout=0.2)
    await rig.start()
    rig.payment(1)
    await rig.poll()
    rig.kafka.hang_commits = True
    began = time.monotonic()
    await asyncio.wait_for(rig.bridge.commit(), 5)
    assert time.monotonic() - began < 2
    rig.kafka.hang_commits = False
    await asyncio.wait_for(rig.bridge.commit(), 5)
    assert [offset for offset in rig.kafka.committed.values()] == [1]


async def test_periodic_commits_survive_an_unexpected_error() -> None:
    """Break 8 of issue 12: one unexpected error in the periodic commit loop ended periodic
    commits for good."""
    rig = Rig(max_inflight=10, answer_at_once=True, commit_interval=0.05)
    rig.kafka.fail_commits = [RuntimeError("unexpected"), ValueError("also unexpected")]
    await rig.start()
    rig.payment(1)
    await rig.poll()
    committer = asyncio.create_task(rig.bridge._commit_loop())
    try:
        for _ in range(100):
            if rig.kafka.committed:
                break
            await asyncio.sleep(0.05)
    finally:
        committer.cancel()
    assert list(rig.kafka.committed.values()) == [1]
    assert rig.kafka.fail_commits == []


async def test_shutdown_abandons_what_does_not_finish_within_the_grace() -> None:
    """SIGTERM (``stop()``): calls that never return are abandoned after the grace period,
    what finished is committed, nothing past the unfinished record; run() returns in bounded
    time even when the final commit hangs."""
    rig = Rig(max_inflight=10, grace=0.3, commit_timeout=0.3)
    await rig.start()
    rig.payment(1)
    runner = asyncio.create_task(rig.bridge.run())
    for _ in range(100):
        if rig.temporal.pending:
            break
        await asyncio.sleep(0.01)
    rig.temporal.answer(rig.temporal.pending[0])  # record 0 done
    rig.payment(2)  # record 1: its call never returns
    for _ in range(100):
        if rig.temporal.pending:
            break
        await asyncio.sleep(0.01)
    rig.kafka.hang_commits = True
    began = time.monotonic()
    rig.bridge.stop()
    await asyncio.wait_for(runner, 10)
    took = time.monotonic() - began
    assert took < 0.3 + 2 + 0.3 + 1, took
    assert rig.temporal.abandoned, "the hanging call was abandoned"
    assert all(offset <= 1 for commit in rig.kafka.commits for offset in commit.values())


async def test_a_record_neither_applied_nor_dead_lettered_stops_the_bridge() -> None:
    """A record that cannot reach Temporal nor the DLQ must not leave its partition stalled
    behind it unseen: the bridge stops, with the cause (its supervisor exits non-zero)."""
    rig = Rig(max_inflight=10)

    class BrokenSender(RecordingSender):
        async def send_and_wait(self, *args: Any, **kwargs: Any) -> Any:
            raise TypeError("the DLQ cannot take this")

    rig.bridge.dead_letters = DeadLetters(BrokenSender(), "dlq")
    await rig.start()
    rig.kafka.produce("payments", b"p1", b"not an event")
    runner = asyncio.create_task(rig.bridge.run())
    await asyncio.wait_for(runner, 10)
    assert isinstance(rig.bridge.failure, TypeError)
    assert rig.kafka.committed == {} or set(rig.kafka.committed.values()) == {0}


async def test_the_dlq_writer_shrinks_a_record_too_large_once_per_step() -> None:
    """Break 6 of issue 12: when the key and headers alone exceeded the DLQ topic's limit, the
    headers-only retry looped without back-off, adding a header each time. Now: without the
    value, then without key and own headers, then back-off (and an error) without growing."""
    from aiokafka.errors import MessageSizeTooLargeError

    limit = 4096

    class Limited(RecordingSender):
        attempts = 0

        async def send_and_wait(
            self, topic: str, value: Any = None, key: Any = None, *args: Any, **kw: Any
        ) -> Any:
            await asyncio.sleep(0)  # the network: a loop that spins still yields here
            Limited.attempts += 1
            headers = kw.get("headers") or []
            size = (
                len(value or b"")
                + len(key or b"")
                + sum(len(k) + len(v or b"") for k, v in headers)
            )
            if size > limit:
                raise MessageSizeTooLargeError()
            return await super().send_and_wait(topic, value, key, headers=headers)

    sender = Limited()
    record = FakeGroupConsumer().produce(
        "payments", b"k" * 10_000, b"v" * 10_000, [("h", b"x" * 3000), ("h2", b"y" * 3000)]
    )
    await asyncio.wait_for(
        DeadLetters(sender, "dlq").send(record, reason="undecodable", error=ValueError("x")), 5
    )
    assert Limited.attempts == 3
    [(_, key, value, headers)] = sender.sent
    names = [k for k, _ in headers]
    assert key is None and value is None
    assert "h" not in names and names.count("dlq.reason") == 1
    found = dict(headers)
    assert found["dlq.value.omitted_bytes"] == b"10000"
    assert found["dlq.key.omitted_bytes"] == b"10000"
    assert found["dlq.headers.omitted"] == b"2"
    assert found["dlq.source.topic"] == b"payments"

    class Refusing(RecordingSender):
        attempts = 0
        sizes: list[int] = []

        async def send_and_wait(self, *args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            Refusing.attempts += 1
            Refusing.sizes.append(len(kwargs.get("headers") or []))
            raise MessageSizeTooLargeError()

    refusing = Refusing()
    sending = asyncio.create_task(
        DeadLetters(refusing, "dlq").send(record, reason="undecodable", error=ValueError("x"))
    )
    await asyncio.sleep(0.5)
    assert not sending.done(), "it keeps trying (never drops a record)..."
    sending.cancel()
    # ...with back-off: a few attempts in half a second, not thousands, and no growing record.
    assert 3 <= Refusing.attempts <= 6, Refusing.attempts
    assert len(set(Refusing.sizes[2:])) == 1, Refusing.sizes


def test_backoff_survives_a_long_outage() -> None:
    """Found by the race machine: after ~1,000 retries (a Temporal outage of about three
    hours at the 10 s cap) Backoff.next_delay raised OverflowError, and the record went to the
    DLQ as processing_error."""
    backoff = Backoff(initial=0.1, cap=10.0)
    delays = [backoff.next_delay() for _ in range(3000)]
    assert max(delays) <= 10.0 and delays[-1] >= 5.0
