"""Fault injection: drive a real cluster with payments, inject faults, check nothing was lost.

``python -m tests.faults`` runs it from the command line (``--help``); ``tests/test_faults.py``
runs its CI mode.
"""
