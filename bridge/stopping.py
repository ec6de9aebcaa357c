"""Stopping aiokafka consumers that the CLI tools start for a moment."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()``, for a consumer that may be stopped right after it started.

    aiokafka 0.14 lets the cancellation of an internal task (``_reset_committed_routine``)
    escape ``stop()`` when it comes right after ``start()`` (e.g. a tool that finds its topic
    missing); that would hide the tool's own error. Our own cancellation still propagates.
    """
    task = asyncio.current_task()
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        if task is not None and task.cancelling():
            raise
        await consumer.stop()  # the rest of the shutdown
