# syntax=docker/dockerfile:1
# One image for every paybridge process of docker-compose.yml: `paybridge bridge`,
# `paybridge worker`, `paybridge webhook`, the one-shot `paybridge topics create` and the
# operator commands (`docker compose run --rm cli ...`). It carries the runtime only:
# no embedded servers, no plotting (those are the `dev` and `tools` extras).
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

# The dependencies, in a layer of their own: rebuilt only when pyproject.toml changes, not
# on every change to the source.
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PAYBRIDGE_METRICS_PORT=9464 \
    PAYBRIDGE_SDK_METRICS_PORT=9465
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

FROM runtime AS build
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM runtime
RUN useradd --create-home --uid 10001 paybridge \
    && mkdir /data \
    && chown paybridge /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels /src
USER paybridge
WORKDIR /data
# /metrics, /healthz and /readyz; the worker also serves the Temporal SDK's metrics on 9465,
# the webhook takes the gateway's callbacks on 9480.
EXPOSE 9464 9465 9480
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['PAYBRIDGE_METRICS_PORT']}/readyz\", timeout=2)"]
ENTRYPOINT ["paybridge"]
CMD ["--help"]
