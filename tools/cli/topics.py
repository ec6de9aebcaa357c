"""`paybridge topics create`: Kafka topic administration."""

from __future__ import annotations

from typing import Any

import click

from tools.cli.common import CONNECTION_FLAGS, guard, run_async, settings_from, settings_options


@click.group()
def topics() -> None:
    """Kafka topic administration."""


@topics.command("create")
@settings_options(CONNECTION_FLAGS[:2])
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=None,
    help="Partitions of each input topic [env PAYBRIDGE_INPUT_PARTITIONS; default 6]",
)
@click.option(
    "--replication-factor",
    type=click.IntRange(min=1),
    default=1,
    help="Replicas of each partition: 1 for development, 3 in production.",
)
@click.option(
    "--min-insync-replicas",
    type=click.IntRange(min=1),
    default=1,
    help="Replicas that must have a write before acks=all producers get their answer: "
    "1 for development, 2 in production (with 3 replicas).",
)
@guard
def topics_create(
    partitions: int | None, replication_factor: int, min_insync_replicas: int, **options: Any
) -> None:
    """Create every topic paybridge uses (existing topics are left as they are).

    Production: --replication-factor 3 --min-insync-replicas 2, so that an acknowledged
    record survives the loss of a broker.
    """
    from plumbing.kafka import create_topics, topic_specs

    settings = settings_from({**options, "input_partitions": partitions})
    created = run_async(
        create_topics(
            settings,
            replication_factor=replication_factor,
            min_insync_replicas=min_insync_replicas,
        )
    )
    for name, count in topic_specs(settings).items():
        state = "created" if name in created else "exists"
        click.echo(f"{name:<32} {count:>3} partitions  {state}")
