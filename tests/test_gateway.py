"""The simulated gateway and notification sink keep bounded memory, and stay idempotent for as
long as a payment lives."""

from __future__ import annotations

from schemas.events import CallbackStatus, GatewayCallback
from tests.support import payment
from workflows.simulations.gateway import GatewayBehaviour, SimulatedGateway
from workflows.simulations.notifications import Notification, NotificationSink


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Emitter:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.emitted: list[GatewayCallback] = []

    async def emit(self, callback: GatewayCallback) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Kafka did not take it")
        self.emitted.append(callback)


def gateway(emitter: Emitter, clock: Clock, **limits: float) -> SimulatedGateway:
    return SimulatedGateway(
        GatewayBehaviour(latency=0), emitter=emitter, secret="s", clock=clock, **limits
    )


async def test_requests_are_forgotten_beyond_the_size_limit_oldest_first() -> None:
    emitter, clock = Emitter(), Clock()
    gw = gateway(emitter, clock, max_requests=100)
    payments = [payment(n) for n in range(1000)]
    for p in payments:
        await gw.authorize(p)
    assert gw.remembered() == 100
    # The newest are remembered: asking again is idempotent (same reference, no new verdict).
    assert await gw.authorize(payments[-1]) == f"gw-{payments[-1].payment_id}"
    assert gw.status(payments[-1].payment_id) == CallbackStatus.AUTHORIZED
    assert len(emitter.emitted) == 1000
    # The oldest are forgotten.
    assert gw.status(payments[0].payment_id) is None
    assert gw.void(payments[0].payment_id) is False


async def test_requests_are_remembered_for_the_retention_then_forgotten() -> None:
    emitter, clock = Emitter(), Clock()
    gw = gateway(emitter, clock, retention=3600)
    p = payment(1)
    ref = await gw.authorize(p)
    clock.now += 3599  # a retried authorisation or a status query within the payment's life
    assert await gw.authorize(p, attempt=2) == ref
    assert gw.status(p.payment_id) == CallbackStatus.AUTHORIZED
    assert len(emitter.emitted) == 1
    clock.now += 2
    assert gw.remembered() == 0


async def test_a_late_authorisation_after_a_void_gets_no_fresh_authorisation() -> None:
    emitter, clock = Emitter(), Clock()
    gw = gateway(emitter, clock)
    p = payment(2)
    ref = await gw.authorize(p)
    assert gw.void(p.payment_id) is True
    assert await gw.authorize(p, attempt=2) == ref
    assert gw.void(p.payment_id) is False
    assert len(emitter.emitted) == 1


async def test_a_callback_kafka_does_not_take_at_once_is_sent_again() -> None:
    emitter, clock = Emitter(failures=2), Clock()
    gw = gateway(emitter, clock)
    await gw.authorize(payment(3))
    assert [c.status for c in emitter.emitted] == [CallbackStatus.AUTHORIZED]


def test_the_notification_sink_keeps_recent_messages_and_keys_only() -> None:
    sink = NotificationSink(keys_kept=50, sent_kept=10)

    def message(n: int) -> Notification:
        return Notification("email", "c@example.com", f"p{n}", "SUCCEEDED", "went through")

    assert all(sink.send(message(n)) for n in range(200))
    assert len(sink.sent) == 10 and len(sink._keys) == 50
    assert sink.send(message(199)) is False  # a retry of a recent one is still a duplicate
    assert [n.payment_id for n in sink.for_payment("p199")] == ["p199"]
