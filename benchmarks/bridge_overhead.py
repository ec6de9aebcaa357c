"""How much does the bridge cost next to Temporal? Workflow starts/s, side by side in one run.

Three ways of turning the same kind of PaymentCreated records into workflow starts, against
the same Temporal dev server, each on fresh payment ids (so nothing is deduplicated):

- ``sdk``:    a plain asyncio loop calling ``client.start_workflow`` with the same concurrency
              as the bridge's in-flight limit (the Temporal-only ceiling for starts);
- ``bridge``: paybridge's consumer reading the records from Kafka (decode, validate, start,
              commit offsets);
- ``naive``:  a consume-one, await-start, commit, next loop (what a hand-written consumer
              often is), on a smaller sample because it is slow.

No worker runs: the workflows are started, not executed, so the figures measure the start
path only. The bridge's CPU seconds per 1,000 events come from this process's CPU time while
only the bridge runs. Usage::

    python benchmarks/bridge_overhead.py             # 3000 records per run, 2 rounds
    python benchmarks/bridge_overhead.py --quick     # 1000 records, 1 round
    python benchmarks/bridge_overhead.py --temporal-rtt-ms 20   # Temporal a network hop away

``--temporal-rtt-ms`` puts every path's Temporal client behind ``latency_proxy.py`` (in its
own process), which adds that round trip to each call, as a Temporal in another zone or
Temporal Cloud would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from bridge.metrics import BridgeMetrics
from bridge.service import open_bridge
from bridge.temporal_calls import TemporalCalls
from plumbing.kafka import client_kwargs, create_topics
from plumbing.settings import Settings
from schemas.codec import Codec
from schemas.events import PaymentCreated
from schemas.ids import payment_workflow_id
from schemas.workflow_api import SIGNAL_PAYMENT_CREATED, PaymentCreatedSignal, PaymentWorkflowInput
from tools.devstack import kafka_broker, temporal_server, wait_for_temporal
from tools.processes import free_port
from tools.producing import encode_record

HOST = "127.0.0.1"


def make_payments(count: int, tag: str) -> list[PaymentCreated]:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return [
        PaymentCreated(
            event_id=str(uuid.uuid4()),
            payment_id=f"bench-{tag}-{n}",
            account_id=f"acct-{n % 1000 + 1:04d}",
            merchant_id="merchant-bench",
            amount_minor=100 + n,
            currency="EUR",
            method="CARD",
            created_at=now,
        )
        for n in range(count)
    ]


def settings_for(base: Settings, tag: str) -> Settings:
    return base.model_copy(
        update={
            "consumer_group": f"bench-{tag}",
            "temporal_task_queue": f"bench-{tag}",
            "topic_payments": f"bench-payments-{tag}",
            "topic_callbacks": f"bench-callbacks-{tag}",
            "topic_cancels": f"bench-cancels-{tag}",
            "topic_outcomes": f"bench-outcomes-{tag}",
            "topic_dlq": f"bench-dlq-{tag}",
        }
    )


async def produce(settings: Settings, payments: list[PaymentCreated]) -> None:
    from plumbing.kafka import idempotent_producer

    codec = Codec()
    producer = idempotent_producer(settings)
    await producer.start()
    try:
        futures = []
        for p in payments:
            key, value, headers = encode_record(codec, p)
            futures.append(
                await producer.send(settings.topic_payments, value, key=key, headers=headers)
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def run_sdk(base: Settings, client, count: int, concurrency: int) -> float:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    settings = settings_for(base, tag)
    calls = TemporalCalls(
        client, task_queue=settings.temporal_task_queue, metrics=BridgeMetrics(CollectorRegistry())
    )
    payments = make_payments(count, tag)
    gate = asyncio.Semaphore(concurrency)

    async def one(p: PaymentCreated) -> None:
        async with gate:
            await calls.signal_with_start(  # the bridge's own call for a PaymentCreated
                payment_workflow_id(p.payment_id),
                workflow_input=PaymentWorkflowInput(payment=p),
                signal=SIGNAL_PAYMENT_CREATED,
                arg=PaymentCreatedSignal(payment=p),
            )

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in payments))
    return count / (time.perf_counter() - started)


async def run_bridge(base: Settings, client, count: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    settings = settings_for(base, tag)
    await create_topics(settings)
    await produce(settings, make_payments(count, tag))
    registry = CollectorRegistry()
    async with open_bridge(settings, client, registry=registry, gateway_secret="bench") as bridge:
        runner = asyncio.create_task(bridge.run())
        cpu0 = time.process_time()
        first: float | None = None
        while True:
            done = (
                registry.get_sample_value("paybridge_workflow_starts_total", {"result": "started"})
                or 0.0
            )
            if done and first is None:
                first = time.perf_counter()
            if done >= count:
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - (first or time.perf_counter())
        cpu = time.process_time() - cpu0
        bridge.stop()
        await runner
    return count / elapsed, cpu / count * 1000


async def run_naive(base: Settings, client, count: int) -> float:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    settings = settings_for(base, tag)
    await create_topics(settings)
    await produce(settings, make_payments(count, tag))
    codec = Codec()
    consumer = AIOKafkaConsumer(
        settings.topic_payments,
        **client_kwargs(settings),
        group_id=settings.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    handled = 0
    started: float | None = None
    try:
        while handled < count:
            record = await consumer.getone()
            started = started or time.perf_counter()
            event = codec.decode(PaymentCreated, record.value, headers=record.headers)
            await client.start_workflow(
                "PaymentWorkflow",
                PaymentWorkflowInput(payment=event),
                id=payment_workflow_id(event.payment_id),
                task_queue=settings.temporal_task_queue,
            )
            await consumer.commit()
            handled += 1
    finally:
        await consumer.stop()
    return count / (time.perf_counter() - (started or time.perf_counter()))


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="paybridge-bench-") as tmp:
        root = Path(tmp)
        tport, kport = free_port(), free_port()
        temporal = temporal_server(port=tport, ui_port=None, data_dir=None, log_dir=root)
        kafka = kafka_broker(port=kport, data_dir=root, log_dir=root)
        await temporal.start()
        await kafka.start()
        proxy: asyncio.subprocess.Process | None = None
        try:
            await kafka.wait_for_port(HOST, kport)
            await temporal.wait_for_port(HOST, tport)
            if args.temporal_rtt_ms:
                pport = free_port()
                proxy = await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(Path(__file__).with_name("latency_proxy.py")),
                    f"--listen={pport}",
                    f"--to={HOST}:{tport}",
                    f"--rtt-ms={args.temporal_rtt_ms}",
                )
                await asyncio.sleep(1)
                tport = pport
            base = Settings(
                KAFKA_BOOTSTRAP_SERVERS=f"{HOST}:{kport}",
                TEMPORAL_ADDRESS=f"{HOST}:{tport}",
                PAYBRIDGE_MAX_INFLIGHT=args.concurrency,
            )
            client = await wait_for_temporal(base)
            await run_sdk(base, client, 200, args.concurrency)  # warm-up
            sdk, bridge, cpu = [], [], []
            for round_ in range(args.rounds):
                sdk.append(await run_sdk(base, client, args.count, args.concurrency))
                rate, per_k = await run_bridge(base, client, args.count)
                bridge.append(rate)
                cpu.append(per_k)
                print(f"round {round_ + 1}: sdk {sdk[-1]:.0f}/s  bridge {rate:.0f}/s", flush=True)
            naive = await run_naive(base, client, args.naive_count)
        finally:
            if proxy is not None:
                proxy.terminate()
                await proxy.wait()
            await kafka.stop()
            await temporal.stop()

    sdk_rate, bridge_rate = statistics.median(sdk), statistics.median(bridge)
    print()
    print(f"machine: {machine()}")
    print(
        f"records per run: {args.count} (naive: {args.naive_count}), "
        f"concurrency {args.concurrency}, rounds {args.rounds}, no worker (start path only), "
        f"added Temporal round trip {args.temporal_rtt_ms:g} ms"
    )
    print(f"{'path':<28}{'starts/s':>10}")
    print(f"{'SDK loop (Temporal only)':<28}{sdk_rate:>10.0f}")
    print(f"{'paybridge bridge':<28}{bridge_rate:>10.0f}")
    print(f"{'naive consume-await-commit':<28}{naive:>10.0f}")
    print(f"bridge / SDK loop:   {bridge_rate / sdk_rate:.2f}x  (target >= 0.95x)")
    print(f"bridge / naive loop: {bridge_rate / naive:.1f}x  (target >= 10x)")
    print(
        f"bridge CPU: {statistics.median(cpu):.2f} s per 1,000 events "
        "(this process: decode, Kafka client, Temporal client)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--naive-count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="1000 records, 1 round")
    parser.add_argument(
        "--temporal-rtt-ms",
        type=float,
        default=0.0,
        help="round trip added to every Temporal call (a proxy in its own process)",
    )
    ns = parser.parse_args()
    if ns.quick:
        ns.count, ns.rounds, ns.naive_count = 1000, 1, 200
    asyncio.run(main(ns))
