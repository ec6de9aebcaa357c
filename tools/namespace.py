"""Namespace administration: register a namespace and the search attributes the workflows set."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    RegisterNamespaceRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from schemas.workflow_api import SEARCH_ATTRIBUTES

_TYPES = {"Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD}


async def register_namespace(
    client: Client, namespace: str, *, retention: timedelta = timedelta(days=3)
) -> bool:
    """Register ``namespace``; False if it already existed."""
    period = Duration()
    period.FromTimedelta(retention)
    try:
        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace=namespace, workflow_execution_retention_period=period
            )
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.ALREADY_EXISTS:
            return False
        raise
    # A new namespace takes a moment to be served by every frontend.
    for _ in range(50):
        try:
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=namespace)
            )
            return True
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            await asyncio.sleep(0.2)
    return True


async def register_search_attributes(client: Client, namespace: str) -> list[str]:
    """Add the search attributes the workflows set (``PaymentStatus``, ``MerchantId``) that
    ``namespace`` lacks; returns the names added."""
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        existing = set(listed.custom_attributes)
    except RPCError as exc:
        # The time-skipping test server can add search attributes but not list them.
        if exc.status != RPCStatusCode.UNIMPLEMENTED:
            raise
        existing = set()
    missing = {
        name: _TYPES[kind] for name, kind in SEARCH_ATTRIBUTES.items() if name not in existing
    }
    if missing:
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
            )
        except RPCError as exc:
            if exc.status != RPCStatusCode.ALREADY_EXISTS:
                raise
    return sorted(missing)
