"""The simulated customer notification service: an e-mail/SMS sink that records what was sent.

Sending is idempotent per (payment, status): a retried notification activity records and
"sends" one message, as a real provider's idempotency key would ensure. With a ``path``, each
message is also appended to that file as one JSON object per line (``paybridge dev`` keeps
``notifications.jsonl`` in its data directory), so that what customers were told can be read.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notification:
    channel: str
    to: str
    payment_id: str
    status: str
    text: str


class NotificationSink:
    """Keeps every message sent, in order; ``sent`` is what a customer would have received."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._keys: set[tuple[str, str]] = set()
        self.sent: list[Notification] = []

    def send(self, notification: Notification) -> bool:
        """Record ``notification``; False if this payment's status was already notified."""
        key = (notification.payment_id, notification.status)
        with self._lock:
            if key in self._keys:
                return False
            self._keys.add(key)
            self.sent.append(notification)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(asdict(notification)) + "\n")
        log.info("%s to %s: %s", notification.channel, notification.to, notification.text)
        return True

    def for_payment(self, payment_id: str) -> list[Notification]:
        with self._lock:
            return [n for n in self.sent if n.payment_id == payment_id]
