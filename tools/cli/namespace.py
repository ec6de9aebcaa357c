"""`paybridge namespace register`: a namespace with the workflows' search attributes."""

from __future__ import annotations

from typing import Any

import click

from tools.cli.common import (
    TEMPORAL_FLAGS,
    duration_arg,
    exit_before_finalizing,
    guard,
    run_async,
    settings_from,
    settings_options,
)


@click.group()
def namespace() -> None:
    """Temporal namespace administration."""


@namespace.command("register")
@click.option("--retention", default="3d", callback=duration_arg, help="History retention")
@settings_options(TEMPORAL_FLAGS[:2])
@exit_before_finalizing
@guard
def namespace_register(retention: Any, **options: Any) -> None:
    """Register TEMPORAL_NAMESPACE (if missing) and the search attributes PaymentStatus and
    MerchantId that the workflows set."""
    from tools.namespace import register_namespace, register_search_attributes
    from tools.operations import connect_client

    settings = settings_from(options)
    name = settings.temporal_namespace

    async def run() -> tuple[bool, list[str]]:
        # Registering goes through any namespace's connection; the attributes are per namespace.
        client = await connect_client(settings.model_copy(update={"temporal_namespace": "default"}))
        created = await register_namespace(client, name, retention=retention)
        added = await register_search_attributes(client, name)
        return created, added

    created, added = run_async(run())
    click.echo(f"namespace {name}: {'registered' if created else 'exists'}")
    click.echo(f"search attributes added: {', '.join(added) if added else 'none (all present)'}")
