"""Avro schemas of paybridge's events (namespace ``paybridge.v1``); every version is kept.

Files are named ``<event>.v<N>.avsc``. A writer schema is found by its CRC-64-AVRO fingerprint,
so a version must never be edited once published: add ``.v<N+1>`` instead.
"""
