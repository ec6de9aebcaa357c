"""OpenTelemetry tracing: one trace from a Kafka record (or a webhook call) to the outcome.

Off by default. It is on when the ``tracing`` extra is installed (``pip install
'paybridge[tracing]'``), ``OTEL_SDK_DISABLED`` is not ``true``, ``OTEL_TRACES_EXPORTER`` is not
``none``, and an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``). Everything else comes from the standard ``OTEL_*``
variables through the SDK: ``OTEL_SERVICE_NAME`` (default ``paybridge``),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_PROPAGATORS`` (default W3C trace context and baggage), ``OTEL_BSP_*``.

Where the context travels:

- a record's ``traceparent`` header -> :func:`consume_span` around the bridge's start or
  signal -> Temporal's ``TracingInterceptor`` (on every client made by
  ``plumbing.temporal.connect``; workers built on it inherit it) carries it in the workflow's
  and activities' headers -> :func:`inject` puts the publishing activity's span into the
  outcome record's headers;
- a webhook request's ``traceparent`` -> :func:`server_span` -> :func:`inject` into the
  callback record.

Without the extra or the configuration every function here is a no-op that imports nothing
of OpenTelemetry.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer
    from temporalio.client import Interceptor

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "paybridge"
HeaderItems = Iterable[tuple[str, "bytes | str | None"]]


class KafkaRecord(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


_tracer: Tracer | None = None
_configured = False


def enabled_by(env: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` variables in ``env`` ask for traces to be exported."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def available() -> bool:
    """Whether the ``tracing`` extra is installed."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
        )
    except (ImportError, ValueError):  # a parent package missing or blocked
        return False


def configure(provider: TracerProvider | None) -> None:
    """Trace with ``provider`` from now on (None: tracing off). Tests use this with an
    in-memory exporter; processes are configured from the environment on first use."""
    global _tracer, _configured
    _tracer = provider.get_tracer("paybridge") if provider is not None else None
    _configured = True


def _from_environment() -> TracerProvider | None:
    if not enabled_by(os.environ):
        return None
    if not available():
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but tracing is not installed "
            "(pip install 'paybridge[tracing]'): no traces are exported"
        )
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_*
    log.info("tracing on: spans exported over OTLP/HTTP")
    return provider


def tracer() -> Tracer | None:
    """The tracer, or None while tracing is off."""
    if not _configured:
        configure(_from_environment())
    return _tracer


def client_interceptors() -> list[Interceptor]:
    """Temporal client interceptors: the OpenTelemetry one while tracing is on."""
    current = tracer()
    if current is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(current)]


def _extract(headers: HeaderItems) -> Any:
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    for key, value in headers:
        if value is None:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        carrier.setdefault(key.lower(), text)
    return propagate.extract(carrier)


@contextlib.contextmanager
def consume_span(record: KafkaRecord, name: str | None = None) -> Iterator[None]:
    """A CONSUMER span for applying ``record``, child of the trace in its headers (a new trace
    if it has none). Temporal calls made inside it carry it into the workflow."""
    current = tracer()
    if current is None:
        yield
        return
    from opentelemetry.trace import SpanKind

    with current.start_as_current_span(
        name or f"{record.topic} process",
        context=_extract(record.headers or ()),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
        },
    ):
        yield


@contextlib.contextmanager
def server_span(name: str, headers: HeaderItems) -> Iterator[None]:
    """A SERVER span for an HTTP request, child of the trace in its headers."""
    current = tracer()
    if current is None:
        yield
        return
    from opentelemetry.trace import SpanKind

    with current.start_as_current_span(name, context=_extract(headers), kind=SpanKind.SERVER):
        yield


def inject(headers: list[tuple[str, bytes]]) -> None:
    """Add the current trace context (``traceparent``, ...) to a record's headers."""
    if tracer() is None:
        return
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    names = {key.lower() for key in carrier}
    headers[:] = [(k, v) for k, v in headers if k.lower() not in names]
    headers.extend((key, value.encode("latin-1")) for key, value in carrier.items())
