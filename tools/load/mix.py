"""The load generator's payment mix: which payments it makes and what each one is meant to do.

Every payment gets one *intent*. Intents the bridge and the ledger decide on their own
(``unknown_account``, ``unsupported_currency`` -> REJECTED; ``cancel`` -> a cancel request right
behind the payment) always mean what they say. Gateway intents (``decline``, ``gateway_error``,
``timeout``) are hints in the payment's metadata (``gateway``: ``decline`` | ``error`` |
``never``) that the simulated gateway of ``paybridge dev`` honours; a gateway that ignores
them approves.
The load generator counts whatever statuses come back, per intent.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime

from schemas.events import PaymentCancelRequested, PaymentCreated, PaymentMethod

# Metadata keys the load generator writes (docs/load.md lists them for the gateway simulator).
SIMULATE_KEY = "gateway"
RUN_KEY = "loadgen.run"
INTENT_KEY = "loadgen.intent"

SIMULATE_HINTS = {"decline": "decline", "gateway_error": "error", "timeout": "never"}
CURRENCIES = (("EUR", 0.55), ("USD", 0.30), ("GBP", 0.15))
UNSUPPORTED_CURRENCIES = ("JPY", "CHF", "SEK", "PLN")
METHODS = (
    (PaymentMethod.CARD, 0.70),
    (PaymentMethod.WALLET, 0.20),
    (PaymentMethod.BANK_TRANSFER, 0.10),
)
DEMO_ACCOUNTS = 1000
HOT_ACCOUNTS = 50  # a fifth of the traffic goes to a few busy accounts
MERCHANTS = 200


@dataclass(frozen=True)
class Mix:
    """Shares (0..1) of payments with each intent; the rest are ordinary payments."""

    unknown_account: float = 0.03
    unsupported_currency: float = 0.02
    decline: float = 0.05
    # Off by default, both: an ERROR callback sends the saga to its stale path (ask again after
    # PAYBRIDGE_STALE_RETRY_DELAY, 30 minutes by default) and then to manual review, which
    # publishes no outcome until an operator resolves it; a payment the gateway never answers
    # ends only after PAYBRIDGE_CALLBACK_TIMEOUT (5 minutes by default).
    gateway_error: float = 0.0
    cancel: float = 0.03
    timeout: float = 0.0
    json: float = 0.10  # share sent as JSON (content-type header) instead of Avro

    def __post_init__(self) -> None:
        for field in fields(self):
            share = getattr(self, field.name)
            if not 0 <= share <= 1:
                raise ValueError(f"mix share {field.name}={share} is not between 0 and 1")
        if sum(self.intent_shares().values()) > 1:
            raise ValueError("mix shares add up to more than 1")

    @classmethod
    def parse(cls, text: str) -> Mix:
        """``decline=0.1,cancel=0``; unnamed shares keep their defaults, after ``none`` they
        are 0 (``none,cancel=0.1``: only cancels)."""
        names = [f.name for f in fields(cls)]
        given: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            if part == "none":
                given = dict.fromkeys(names, 0.0)
                continue
            name, sep, value = part.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in names:
                raise ValueError(f"{part!r}: use NAME=SHARE with NAME one of {names}")
            given[name] = float(value)
        return cls(**given)

    def intent_shares(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "json"}


@dataclass(frozen=True)
class Planned:
    """One payment to send, what it is meant to do, and its cancel request if it has one."""

    payment: PaymentCreated
    intent: str
    as_json: bool
    cancel: PaymentCancelRequested | None = None


def _pick(rng: random.Random, weighted: tuple[tuple[object, float], ...]) -> object:
    return rng.choices([v for v, _ in weighted], weights=[w for _, w in weighted])[0]


class PaymentFactory:
    """Makes the payments of one run, ``lg-{run}-{n}``, reproducibly for a given seed."""

    def __init__(self, mix: Mix, *, run_id: str, seed: int | None = None) -> None:
        self.mix = mix
        self.run_id = run_id
        self.rng = random.Random(seed)
        self.made = 0
        shares = mix.intent_shares()
        self._intents = [*shares, "normal"]
        self._weights = [*shares.values(), max(0.0, 1 - sum(shares.values()))]

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _account(self) -> str:
        if self.rng.random() < 0.2:
            return f"acct-{self.rng.randint(1, HOT_ACCOUNTS):04d}"
        return f"acct-{self.rng.randint(1, DEMO_ACCOUNTS):04d}"

    def _amount(self) -> int:
        # Log-normal around 25.00 with a long tail; minor units.
        return max(50, min(5_000_000, round(math.exp(self.rng.gauss(math.log(2500), 1.1)))))

    def next(self) -> Planned:
        rng = self.rng
        n = self.made
        self.made += 1
        intent = rng.choices(self._intents, weights=self._weights)[0]
        now = datetime.now(UTC)
        metadata = {RUN_KEY: self.run_id, INTENT_KEY: intent}
        if intent in SIMULATE_HINTS:
            metadata[SIMULATE_KEY] = SIMULATE_HINTS[intent]
        currency = str(_pick(rng, CURRENCIES))
        account = self._account()
        if intent == "unknown_account":
            account = f"acct-{rng.randint(5000, 9999)}"
        elif intent == "unsupported_currency":
            currency = rng.choice(UNSUPPORTED_CURRENCIES)
        payment = PaymentCreated(
            event_id=self._uuid(),
            payment_id=f"lg-{self.run_id}-{n:07d}",
            account_id=account,
            merchant_id=f"merchant-{rng.randint(1, MERCHANTS):04d}",
            amount_minor=self._amount(),
            currency=currency,
            method=PaymentMethod(str(_pick(rng, METHODS))),
            created_at=now,
            metadata=metadata,
        )
        cancel = None
        if intent == "cancel":
            cancel = PaymentCancelRequested(
                event_id=self._uuid(),
                payment_id=payment.payment_id,
                reason="loadgen: customer cancelled",
                requested_at=now,
            )
        return Planned(payment, intent, rng.random() < self.mix.json, cancel)
