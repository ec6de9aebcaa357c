"""paybridge's Temporal side: the payment workflows, their activities and the worker.

Workflow modules (``payment``, ``fraud``, ``recurring``) are deterministic and replayed, and
import only pure models (``models``, ``schemas``) through the sandbox's pass-through; every
I/O lives in ``activities`` (one module per external system), which call the simulated
services of ``simulations``. ``worker`` assembles them and runs ``paybridge worker``.

This file imports nothing on purpose: the workflow sandbox imports the package afresh for each
workflow, and a model imported here would be a different class from the one passed through.
"""
