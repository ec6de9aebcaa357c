"""A long-lived producer (outcomes, DLQ, loadgen, replay) survives broker restarts.

The embedded broker forgets idempotent producers' state across a restart; aiokafka's producer
then fails every later send with OutOfOrderSequenceNumber, for good. This broker is the test's
own, because the test restarts it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError

from plumbing.kafka import (
    RecoveringProducer,
    create_topics,
    idempotent_producer,
    recovering_producer,
)
from plumbing.settings import Settings
from tests.support import read_topic
from tools.devstack import kafka_broker
from tools.processes import free_port

HOST = "127.0.0.1"
PARTITIONS = 3


async def test_producer_keeps_delivering_across_broker_restarts(tmp_path: Path) -> None:
    port = free_port()
    broker = kafka_broker(port=port, data_dir=tmp_path, log_dir=tmp_path / "logs")
    await broker.start()
    await broker.wait_for_port(HOST, port)
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS=f"{HOST}:{port}")
    await create_topics(settings, {"t": PARTITIONS})
    replaced: list[int] = []
    producer = recovering_producer(settings, what="test", on_replace=lambda: replaced.append(1))
    await producer.start()
    delivered: list[set[bytes]] = [set() for _ in range(PARTITIONS)]
    failures: list[BaseException] = []

    async def keep_sending(partition: int) -> None:
        n = 0
        while True:
            key = f"{partition}-{n}".encode()
            try:  # as the DLQ writer and the outcome activity do: retry a failed send
                await producer.send_and_wait("t", b"v" * 200, key=key, partition=partition)
            except KafkaError as exc:
                failures.append(exc)
                await asyncio.sleep(0.2)
                continue
            delivered[partition].add(key)
            n += 1
            await asyncio.sleep(0.01)

    async def keep_sending_batches(partition: int) -> None:
        """As ``paybridge loadgen`` and ``replay`` do: pipelined sends, gathered per batch."""
        n = 0
        while True:
            keys = [f"{partition}-{n + i}".encode() for i in range(20)]
            try:
                sent = [
                    await producer.send("t", b"v" * 200, key=k, partition=partition) for k in keys
                ]
                await asyncio.gather(*sent)
            except KafkaError as exc:
                failures.append(exc)
                await asyncio.sleep(0.2)
                continue
            delivered[partition].update(keys)
            n += len(keys)
            await asyncio.sleep(0.05)

    senders = [asyncio.create_task(keep_sending_batches(0))]
    senders += [asyncio.create_task(keep_sending(p)) for p in range(1, PARTITIONS)]
    try:
        for _ in range(3):  # sends are in flight at every restart
            await asyncio.sleep(3)
            await broker.stop()  # clean: the broker keeps its records
            await asyncio.sleep(1)
            await broker.start()
            await broker.wait_for_port(HOST, port)
        before = [len(keys) for keys in delivered]
        await asyncio.sleep(5)
        after = [len(keys) for keys in delivered]
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        last = [f"last-{n}".encode() for n in range(20 * PARTITIONS)]
        for n, key in enumerate(last):
            await producer.send_and_wait("t", b"v", key=key, partition=n % PARTITIONS)
        records = await read_topic(settings, "t", expect=sum(after) + len(last), timeout=10)
    finally:
        for task in senders:
            task.cancel()
        await producer.stop()
        await broker.stop()
    assert all(a - b > 50 for a, b in zip(after, before, strict=True)), (
        f"partitions stopped taking records after the restarts: {before} -> {after}; "
        f"errors: {failures[-3:]}"
    )
    # Not asserted: that every record acknowledged before a restart survived it. The embedded
    # broker loses the odd record acknowledged while it stops (seen: one per partition, in two
    # of three restarts). Kafka with acks=all does not; that is the broker's part, not ours.
    assert set(last) <= {r.key for r in records}, "records sent after the restarts are missing"
    assert replaced, "the broker kept the producer's state: this test no longer shows recovery"


async def test_a_send_given_up_on_is_never_written_later(tmp_path: Path) -> None:
    """A send that timed out while the broker was down replaced the producer; the replaced
    producer must not deliver the record once the broker is back (it used to: its stop()
    flushed in the background, retrying for ever)."""
    port = free_port()
    broker = kafka_broker(port=port, data_dir=tmp_path, log_dir=tmp_path / "logs")
    await broker.start()
    await broker.wait_for_port(HOST, port)
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS=f"{HOST}:{port}")
    await create_topics(settings, {"t": 1})
    producer = RecoveringProducer(
        lambda: idempotent_producer(settings), what="test", send_timeout=2.0
    )
    await producer.start()
    try:
        assert await producer.partitions_for("t") == {0}  # metadata known before the outage
        await broker.stop()
        with pytest.raises(KafkaError):
            await producer.send_and_wait("t", b"given up", key=b"held", partition=0)
        await asyncio.sleep(6)  # longer than the old producer's 5 s stop()
        await broker.start()
        await broker.wait_for_port(HOST, port)
        await asyncio.sleep(5)  # a producer still holding the record would deliver it now
        await producer.send_and_wait("t", b"after", key=b"after", partition=0)
        records = await read_topic(settings, "t", expect=1, timeout=10)
    finally:
        await producer.stop()
        await broker.stop()
    assert [r.key for r in records] == [b"after"]


async def test_a_producer_whose_sender_died_is_replaced(settings: Settings) -> None:
    """aiokafka's sender task can die of an unexpected error (its routine re-raises it as
    "Unexpected error during batch delivery"); that producer then fails every send at once,
    for good. Seen in a loaded full test run: the bridge's DLQ writer retried a dead letter
    against it for a minute. The recovering producer replaces it: the next send lands."""
    replaced: list[int] = []
    producer = recovering_producer(settings, what="test", on_replace=lambda: replaced.append(1))
    await producer.start()
    topic = settings.topic_dlq
    try:
        await producer.send_and_wait(topic, b"before", key=b"k")
        inner = producer._producer

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("injected: a bug in aiokafka's sender routine")

        # The sender wakes up for the next record, trips over this and dies, as in the wild.
        inner._message_accumulator.drain_by_nodes = broken
        with pytest.raises(KafkaError):
            await asyncio.wait_for(inner.send_and_wait(topic, b"lost", key=b"k"), 30)
        assert inner._sender.sender_task.done()
        await asyncio.wait_for(producer.send_and_wait(topic, b"after", key=b"k"), 30)
        assert replaced == [1]
    finally:
        await producer.stop()
    records = await read_topic(settings, topic, expect=2)
    assert [record.value for record in records] == [b"before", b"after"]
