"""The simulated customer notification service: an e-mail/SMS sink that records what was sent.

Sending is idempotent per (payment, status): a retried notification activity records and
"sends" one message, as a real provider's idempotency key would ensure. With a ``path``, each
message is also appended to that file as one JSON object per line (``paybridge dev`` keeps
``notifications.jsonl`` in its data directory), so that what customers were told can be read.

Memory is bounded: the idempotency keys of the last ``KEYS_KEPT`` messages (a retry comes
within minutes) and the last ``SENT_KEPT`` messages are kept; the file keeps them all.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KEYS_KEPT = 100_000
SENT_KEPT = 10_000


@dataclass(frozen=True)
class Notification:
    channel: str
    to: str
    payment_id: str
    status: str
    text: str


class NotificationSink:
    """Keeps the last messages sent, in order; ``sent`` is what customers would have received."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        keys_kept: int = KEYS_KEPT,
        sent_kept: int = SENT_KEPT,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._keys: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._keys_kept = keys_kept
        self.sent: collections.deque[Notification] = collections.deque(maxlen=sent_kept)

    def send(self, notification: Notification) -> bool:
        """Record ``notification``; False if this payment's status was already notified."""
        key = (notification.payment_id, notification.status)
        with self._lock:
            if key in self._keys:
                return False
            self._keys[key] = None
            while len(self._keys) > self._keys_kept:
                self._keys.popitem(last=False)
            self.sent.append(notification)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(asdict(notification)) + "\n")
        log.info("%s to %s: %s", notification.channel, notification.to, notification.text)
        return True

    def for_payment(self, payment_id: str) -> list[Notification]:
        with self._lock:
            return [n for n in self.sent if n.payment_id == payment_id]
