"""A TCP proxy that adds a fixed delay each way: Temporal "far away" for the benchmarks.

On loopback a workflow start takes about 5 ms, which flatters a one-at-a-time consumer. In
production Temporal is a network hop away (another zone, or Temporal Cloud): this proxy puts it
there. Each chunk is forwarded ``rtt/2`` after it arrived, in order, without holding up the
chunks behind it, so the proxy adds latency, not a throughput limit. Usage::

    python benchmarks/latency_proxy.py --listen 7300 --to 127.0.0.1:7233 --rtt-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    delivering = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
    finally:
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(Exception):
            await delivering
        writer.close()


async def serve(listen: int, target: str, rtt_ms: float) -> None:
    host, _, port = target.rpartition(":")
    delay = rtt_ms / 2000

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(host, int(port))
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            _pump(client_r, server_w, delay),
            _pump(server_r, client_w, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--to", required=True, help="host:port to forward to")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round trip time to add")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, args.to, args.rtt_ms))
