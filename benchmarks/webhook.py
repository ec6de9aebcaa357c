"""What does the gateway webhook take per callback? Requests/s and latency, with the real broker.

Starts the embedded Kafka-protocol broker on a free port, the webhook in this process, and
POSTs ``--count`` signed callbacks with ``--concurrency`` connections (aiohttp), each answered
only once Kafka acknowledged its record (acks=all). Prints the rate and the latency
percentiles of the answers. Usage::

    python benchmarks/webhook.py                    # 2000 callbacks, 20 at a time
    python benchmarks/webhook.py --count 500 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plumbing.kafka import create_topics
from plumbing.settings import Settings
from schemas.events import to_millis
from tools.devstack import kafka_broker
from tools.processes import free_port
from webhook.app import body_signature
from webhook.service import open_webhook

SECRET = "bench-secret"


def body(n: int) -> bytes:
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "payment_id": f"bench-{n}",
            "gateway_ref": f"gw-{n}",
            "status": "AUTHORIZED",
            "occurred_at": to_millis(datetime.now(UTC)),
        }
    ).encode()


async def run(count: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        broker = kafka_broker(port=port, data_dir=Path(tmp), log_dir=Path(tmp) / "logs")
        await broker.start()
        try:
            await broker.wait_for_port("127.0.0.1", port)
            settings = Settings(
                KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}", PAYBRIDGE_WEBHOOK_PORT=0
            )
            await create_topics(settings)
            async with (
                open_webhook(
                    settings, registry=CollectorRegistry(), secret=SECRET, host="127.0.0.1"
                ) as listening,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http,
            ):
                latencies: list[float] = []
                queue: asyncio.Queue[int] = asyncio.Queue()
                for n in range(count):
                    queue.put_nowait(n)

                async def client() -> None:
                    while not queue.empty():
                        data = body(queue.get_nowait())
                        headers = {"X-Signature": body_signature(SECRET, data)}
                        started = time.perf_counter()
                        async with http.post(listening.url, data=data, headers=headers) as answer:
                            assert answer.status == 202, await answer.text()
                        latencies.append(time.perf_counter() - started)

                began = time.perf_counter()
                await asyncio.gather(*(client() for _ in range(concurrency)))
                elapsed = time.perf_counter() - began
        finally:
            await broker.stop()
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000

    print(f"{count} callbacks, {concurrency} at a time: {count / elapsed:,.0f} accepted/s")
    print(
        f"latency p50 {pct(50):.1f} ms  p95 {pct(95):.1f} ms  p99 {pct(99):.1f} ms  "
        f"mean {statistics.mean(latencies) * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.count, args.concurrency))


if __name__ == "__main__":
    main()
