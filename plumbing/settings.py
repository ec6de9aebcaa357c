"""Typed settings, read once at start-up from environment variables (and CLI flags).

Names are those of docs/contract.md. A missing or bad value raises :class:`ConfigError`
naming the variable.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigError

WEBHOOK_PATH = "/v1/gateway/callbacks"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> timedelta:
    """``500ms``, ``30s``, ``5m``, ``2h``, ``1d`` or a combination such as ``1h30m``."""
    if isinstance(value, timedelta):
        return value
    text = str(value).strip().lower()
    parts = _DURATION_PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration such as 500ms, 30s, 5m or 2h")
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def format_duration(value: timedelta) -> str:
    millis = round(value.total_seconds() * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0 and millis >= size:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return value


# How long a stopping worker lets the activities in flight finish (the longest activity
# timeout of the payment saga is 30 s).
DEFAULT_WORKER_SHUTDOWN_GRACE = timedelta(seconds=30)


class Settings(BaseSettings):
    """Every setting of paybridge. Field aliases are the environment variable names."""

    model_config = SettingsConfigDict(
        populate_by_name=True, extra="ignore", frozen=True, env_ignore_empty=True
    )

    # Kafka
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", alias="KAFKA_BOOTSTRAP_SERVERS")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", alias="KAFKA_SECURITY_PROTOCOL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, alias="KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str | None = Field(None, alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(None, alias="KAFKA_SASL_PASSWORD")
    kafka_ssl_cafile: str | None = Field(None, alias="KAFKA_SSL_CAFILE")
    # mTLS: the client certificate (PEM, may hold the chain) and its private key.
    kafka_ssl_certfile: str | None = Field(None, alias="KAFKA_SSL_CERTFILE")
    kafka_ssl_keyfile: str | None = Field(None, alias="KAFKA_SSL_KEYFILE")
    kafka_ssl_key_password: SecretStr | None = Field(None, alias="KAFKA_SSL_KEY_PASSWORD")

    # Temporal
    temporal_address: str = Field("127.0.0.1:7233", alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field("default", alias="TEMPORAL_NAMESPACE", min_length=1)
    temporal_task_queue: str = Field("payments", alias="TEMPORAL_TASK_QUEUE", min_length=1)
    temporal_tls_cert: str | None = Field(None, alias="TEMPORAL_TLS_CERT")
    temporal_tls_key: str | None = Field(None, alias="TEMPORAL_TLS_KEY")
    temporal_tls_ca: str | None = Field(None, alias="TEMPORAL_TLS_CA")
    temporal_api_key: SecretStr | None = Field(None, alias="TEMPORAL_API_KEY")

    # paybridge
    gateway_secret: SecretStr | None = Field(None, alias="PAYBRIDGE_GATEWAY_SECRET")
    metrics_port: int = Field(9464, alias="PAYBRIDGE_METRICS_PORT", ge=0, le=65535)
    # `paybridge webhook` (and `paybridge dev`): POST /v1/gateway/callbacks
    webhook_port: int = Field(9480, alias="PAYBRIDGE_WEBHOOK_PORT", ge=0, le=65535)
    # `text` (human) or `json` (one object per line, for log shippers)
    log_format: Literal["text", "json"] = Field("text", alias="PAYBRIDGE_LOG_FORMAT")
    # The Temporal SDK's own metrics (worker task latencies, slots, failures); 0 turns them off.
    sdk_metrics_port: int = Field(9465, alias="PAYBRIDGE_SDK_METRICS_PORT", ge=0, le=65535)
    consumer_group: str = Field("paybridge", alias="PAYBRIDGE_CONSUMER_GROUP", min_length=1)
    # Static group membership (Kafka's group.instance.id): a bridge restarted after a crash with
    # the same id takes its partitions back at once instead of waiting for its old session to
    # expire. Give each bridge process its own, stable id (a pod or host name); unset = dynamic.
    group_instance_id: str | None = Field(
        None, alias="PAYBRIDGE_GROUP_INSTANCE_ID", min_length=1, max_length=249
    )
    max_inflight: int = Field(1000, alias="PAYBRIDGE_MAX_INFLIGHT", ge=1)
    callback_timeout: Duration = Field(timedelta(minutes=5), alias="PAYBRIDGE_CALLBACK_TIMEOUT")
    stale_retry_delay: Duration = Field(timedelta(minutes=30), alias="PAYBRIDGE_STALE_RETRY_DELAY")
    orphan_timeout: Duration = Field(timedelta(minutes=10), alias="PAYBRIDGE_ORPHAN_TIMEOUT")
    # On SIGTERM the worker stops polling and lets the activities in flight finish for this long
    # before cancelling them (a rolling deploy then does not cut an outcome being published).
    worker_shutdown_grace: Duration = Field(
        DEFAULT_WORKER_SHUTDOWN_GRACE, alias="PAYBRIDGE_WORKER_SHUTDOWN_GRACE"
    )

    # simulated gateway (`paybridge dev`): relative weights of its verdicts, and its latency
    sim_approve: float = Field(1.0, alias="PAYBRIDGE_SIM_APPROVE", ge=0)
    sim_decline: float = Field(0.0, alias="PAYBRIDGE_SIM_DECLINE", ge=0)
    sim_error: float = Field(0.0, alias="PAYBRIDGE_SIM_ERROR", ge=0)
    sim_never_answer: float = Field(0.0, alias="PAYBRIDGE_SIM_NEVER_ANSWER", ge=0)
    sim_transient_errors: float = Field(0.0, alias="PAYBRIDGE_SIM_TRANSIENT_ERRORS", ge=0, lt=1)
    sim_latency: Duration = Field(timedelta(milliseconds=200), alias="PAYBRIDGE_SIM_LATENCY")
    # How its callbacks travel: produced to the callbacks topic, or POSTed to the webhook (the
    # path a real gateway takes) at PAYBRIDGE_SIM_WEBHOOK_URL (default: this host's webhook).
    sim_callbacks: Literal["kafka", "webhook"] = Field("kafka", alias="PAYBRIDGE_SIM_CALLBACKS")
    sim_webhook_url: str | None = Field(None, alias="PAYBRIDGE_SIM_WEBHOOK_URL")

    # topics
    topic_payments: str = Field("payments.created", alias="PAYBRIDGE_TOPIC_PAYMENTS", min_length=1)
    topic_callbacks: str = Field(
        "gateway.callbacks", alias="PAYBRIDGE_TOPIC_CALLBACKS", min_length=1
    )
    topic_cancels: str = Field(
        "payments.cancel-requested", alias="PAYBRIDGE_TOPIC_CANCELS", min_length=1
    )
    topic_outcomes: str = Field("payments.outcomes", alias="PAYBRIDGE_TOPIC_OUTCOMES", min_length=1)
    topic_dlq: str = Field("payments.dlq", alias="PAYBRIDGE_TOPIC_DLQ", min_length=1)
    input_partitions: int = Field(6, alias="PAYBRIDGE_INPUT_PARTITIONS", ge=1)

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            _host_port(server.strip())
        return value

    @field_validator("temporal_address")
    @classmethod
    def _temporal(cls, value: str) -> str:
        return _host_port(value)

    @field_validator("sim_webhook_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @property
    def webhook_url(self) -> str:
        """Where the simulated gateway POSTs its callbacks."""
        return self.sim_webhook_url or f"http://127.0.0.1:{self.webhook_port}{WEBHOOK_PATH}"

    @property
    def input_topics(self) -> tuple[str, str, str]:
        return (self.topic_payments, self.topic_callbacks, self.topic_cancels)

    def require_gateway_secret(self) -> str:
        if self.gateway_secret is None or not self.gateway_secret.get_secret_value():
            raise ConfigError(
                "PAYBRIDGE_GATEWAY_SECRET",
                "is required to verify gateway callbacks (only `paybridge dev` defaults it)",
            )
        return self.gateway_secret.get_secret_value()


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with ``overrides`` (CLI flags, by field name) on top.

    Raises :class:`ConfigError` naming the first bad variable.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = str(err["loc"][0]) if err["loc"] else "settings"
        alias = Settings.model_fields[field].alias if field in Settings.model_fields else None
        name = alias or field
        raw = err.get("input")
        shown = "" if "PASSWORD" in name or "SECRET" in name or "KEY" in name else f" (got {raw!r})"
        raise ConfigError(name, f"{err['msg']}{shown}") from exc
