"""``authorize_payment`` sees a request it sent through to the gateway's answer.

The saga voids an authorisation only after the authorisation request's real end (tests/
saga_races.py shows it across the saga); these pin the activity's side of that: a cancel from
the workflow waits for the gateway's answer, a timeout or a worker shutting down gives up.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.activity import ActivityCancellationDetails
from temporalio.testing import ActivityEnvironment

from tests.saga_races import RecordingGateway
from tests.support import payment
from workflows.activities.gateway import GatewayActivities
from workflows.models import Authorization, AuthorizeInput


def environment(
    deadline: timedelta = timedelta(seconds=30),
) -> tuple[ActivityEnvironment, list[int]]:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, started_time=datetime.now(UTC), start_to_close_timeout=deadline
    )
    beats: list[int] = []
    env.on_heartbeat = lambda *details: beats.append(1)
    return env, beats


async def until(gateway: RecordingGateway, pid: str, what: str) -> None:
    for _ in range(500):
        if what in gateway.events(pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never saw {what!r}: {gateway.events(pid)}")


async def test_a_cancelled_request_is_seen_through_to_its_grant() -> None:
    gateway = RecordingGateway()
    p = payment(1)
    gateway.plan(p.payment_id).hold_from_attempt = 1  # in transit until released
    env, beats = environment()
    run = asyncio.create_task(
        env.run(GatewayActivities(gateway).authorize_payment, AuthorizeInput(payment=p))
    )
    await until(gateway, p.payment_id, "request #1 sent")
    env.cancel(ActivityCancellationDetails(cancel_requested=True))
    await asyncio.sleep(0.05)
    assert not run.done()  # still waiting for the gateway's answer
    gateway.release(p.payment_id)
    assert await asyncio.wait_for(run, 10) == Authorization(gateway_ref=f"gw-{p.payment_id}")
    assert gateway.granted == {p.payment_id}
    assert beats  # it heartbeated while it waited


@pytest.mark.parametrize(
    "details",
    [
        ActivityCancellationDetails(timed_out=True),
        ActivityCancellationDetails(worker_shutdown=True),
    ],
    ids=["timed out", "worker shutdown"],
)
async def test_a_timeout_or_a_shutdown_gives_the_request_up(
    details: ActivityCancellationDetails,
) -> None:
    gateway = RecordingGateway()
    p = payment(2)
    gateway.plan(p.payment_id).hold_from_attempt = 1
    env, _ = environment()
    run = asyncio.create_task(
        env.run(GatewayActivities(gateway).authorize_payment, AuthorizeInput(payment=p))
    )
    await until(gateway, p.payment_id, "request #1 sent")
    env.cancel(details)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 10)
    gateway.release(p.payment_id)
    await asyncio.sleep(0.05)
    assert gateway.granted == set()  # the abandoned request never reached the gateway


async def test_a_cancelled_request_waits_no_longer_than_its_attempt() -> None:
    gateway = RecordingGateway()
    p = payment(3)
    gateway.plan(p.payment_id).hold_from_attempt = 1  # never released
    env, _ = environment(deadline=timedelta(milliseconds=300))
    run = asyncio.create_task(
        env.run(GatewayActivities(gateway).authorize_payment, AuthorizeInput(payment=p))
    )
    await until(gateway, p.payment_id, "request #1 sent")
    env.cancel(ActivityCancellationDetails(cancel_requested=True))
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 10)
