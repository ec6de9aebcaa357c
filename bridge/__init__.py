"""paybridge's Kafka side: event models and codec, settings, the bridge consumer, metrics and CLI.

Import what you need from the submodules: ``bridge.events`` and ``bridge.codec`` are pure and are
shared with the Temporal workflows; ``bridge.consumer`` and ``bridge.kafka`` do I/O.
"""
