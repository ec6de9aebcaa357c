"""The gateway webhook: a payment gateway's signed HTTP callbacks in, ``gateway.callbacks`` out.

``POST /v1/gateway/callbacks`` takes the JSON form of a ``GatewayCallback`` signed over the raw
body (header ``X-Signature``), and answers 2xx only once Kafka has acknowledged the record it
produced (docs/contract.md, "Gateway webhook"). The bridge then takes the callback from there
like any other.
"""
