"""The contract as code: paybridge's events, their encoding, ids and errors.

- ``*.avsc``: Avro schemas of the events (namespace ``paybridge.v1``), every version kept. Files
  are named ``<event>.v<N>.avsc``; a writer schema is found by its CRC-64-AVRO fingerprint, so
  a version must never be edited once published: add ``.v<N+1>`` instead.
- ``events``: the event models and their validation; ``codec``: Avro single-object and JSON
  encoding; ``ids``: workflow-id and event-id rules; ``workflow_api``: what the bridge and
  operators send to the workflows; ``errors``: every exception paybridge raises.

This package is the bottom layer: it imports nothing else of paybridge (docs/contract.md).
"""
