"""Activities: everything the payment workflows do outside themselves.

One module per external system: ``ledger``, ``gateway``, ``fraud``, ``notifications``, and
``kafka`` (outcome publishing; the only module of ``workflows`` that touches Kafka). Activities
are methods of classes with injected clients, so that a test can build them with fakes or real
clients and the worker wires the real ones. Business failures raise a non-retryable
``ApplicationError`` whose ``type`` the workflow branches on; anything else is retried.
"""
