"""A signal waiting for its payment is applied as soon as this bridge starts the payment.

Temporal is faked here by name (``signal`` answers ``not_found`` until the payment exists): the
end-to-end path is covered by the cancel-before-payment test on the real servers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest

from bridge.routing import Orphans, waiting_for_payment
from bridge.temporal_calls import TemporalCalls
from schemas.errors import OrphanError


class FakeSignals:
    def __init__(self) -> None:
        self.exists: set[str] = set()
        self.calls: list[str] = []

    async def signal(self, workflow_id: str, signal: str, arg: Any) -> str:
        self.calls.append(workflow_id)
        return "signalled" if workflow_id in self.exists else "not_found"


def orphans(fake: FakeSignals, **kwargs: float) -> Orphans:
    return Orphans(cast(TemporalCalls, fake), **kwargs)


async def test_a_waiting_signal_is_woken_by_its_payment_starting() -> None:
    fake = FakeSignals()
    # A back-off of a minute: only the wake-up can apply the signal within the test.
    waiter = orphans(fake, timeout=300, retry_initial=60, retry_cap=60)
    hooked: list[bool] = []
    token = waiting_for_payment.set(lambda: hooked.append(True))
    task = asyncio.create_task(waiter.signal("pay-1", "cancel", None))
    waiting_for_payment.reset(token)  # the task keeps the hook it was created with
    while not fake.calls:
        await asyncio.sleep(0.01)
    assert hooked == [True], "the bridge is told the record is waiting, to free its slot"

    waiter.started("pay-2")  # another payment: stays asleep
    await asyncio.sleep(0.1)
    assert not task.done()

    fake.exists.update(fake.calls)
    began = time.monotonic()
    waiter.started("pay-1")
    assert await asyncio.wait_for(task, 5) == "signalled"
    assert time.monotonic() - began < 1
    assert waiter._wakeups == {}, "a finished waiter leaves nothing behind"


async def test_every_waiter_of_a_payment_is_woken() -> None:
    fake = FakeSignals()
    waiter = orphans(fake, timeout=300, retry_initial=60, retry_cap=60)
    tasks = [
        asyncio.create_task(waiter.signal("pay-1", name, None)) for name in ("cancel", "callback")
    ]
    while len(fake.calls) < 2:
        await asyncio.sleep(0.01)
    fake.exists.update(fake.calls)
    waiter.started("pay-1")
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == ["signalled", "signalled"]


async def test_a_signal_whose_payment_never_starts_is_an_orphan() -> None:
    fake = FakeSignals()
    waiter = orphans(fake, timeout=0.3, retry_initial=0.05, retry_cap=0.1)
    with pytest.raises(OrphanError, match="PAYBRIDGE_ORPHAN_TIMEOUT"):
        await waiter.signal("pay-9", "gateway_callback", None)
    assert len(fake.calls) >= 2, "retried before giving up"
    assert waiter._wakeups == {}
