"""``ctower actions``: the open orders, and a person's answer to one.

An answer is an :class:`ActionStatus` on ``ct.action-status``, written to the
partition of the order's SKU (Kafka's default partition of the key, as the
stock rules' ``stock-moves`` topic has it), so it reaches the rules that issued
the order. The dashboard's approve and reject buttons write the same record.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
from kafka import KafkaProducer

from ctower.errors import CtowerError
from ctower.schemas.actions import ActionStatus
from ctower.schemas.control import encoder
from ctower.settings import Settings
from ctower.topics import partition_for

OPEN_ORDERS_SQL = """
SELECT order_id, kind, status, source, destination, sku, qty, due_at, created_at, ts,
       region, cause, by, note
FROM action_orders FINAL
{where}
ORDER BY due_at, order_id
LIMIT {limit:UInt32}
"""


class ActionError(CtowerError, RuntimeError):
    """An answer could not be written; the message says why."""


def publish_status(settings: Settings, status: ActionStatus, timeout: float = 10.0) -> None:
    """Write one answer and wait until Kafka has it (acks=all)."""
    topic = settings.topic("action-status")
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap, acks="all", client_id="ctower-actions"
    )
    try:
        partitions = producer.partitions_for(topic)
        if not partitions:
            raise ActionError(f"topic {topic} has no partitions on {settings.bootstrap}")
        producer.send(
            topic, key=status.sku.encode(), value=encoder.encode(status),
            partition=partition_for(status.sku.encode(), len(partitions)),
        ).get(timeout=timeout)
    except ActionError:
        raise
    except Exception as exc:  # kafka-python raises many types; the caller needs one
        raise ActionError(f"could not write the answer to {topic}: {exc}") from exc
    finally:
        producer.close(timeout=timeout)


def orders(client: Any, *, open_only: bool = True, limit: int = 500) -> list[dict[str, Any]]:
    """The orders as the store has them (the latest state of each), soonest due first."""
    where = "WHERE status IN ('proposed', 'approved', 'dispatched')" if open_only else ""
    result = client.query(OPEN_ORDERS_SQL.replace("{where}", where),
                          parameters={"limit": limit})
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


@click.group()
def actions() -> None:
    """Transfer and pre-pack orders of the stock rules: list them, approve or reject one."""


@actions.command("list")
@click.option("--all", "everything", is_flag=True, help="Closed orders too.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
def list_orders(everything: bool, as_json: bool) -> None:
    """The open orders (proposed, approved, dispatched), soonest due first."""
    from ctower.cli import settings_or_exit, store_or_exit

    with store_or_exit(settings_or_exit()) as client:
        found = orders(client, open_only=not everything)
    if as_json:
        click.echo(json.dumps(found, default=str, ensure_ascii=False, indent=2))
        return
    if not found:
        click.echo("no open orders" if not everything else "no orders")
    for o in found:
        click.echo(
            f"{o['order_id']}  {o['kind']:<8} {o['status']:<10} {o['qty']:>6} x {o['sku']}  "
            f"{o['source']} -> {o['destination']}  due {o['due_at']:%Y-%m-%d %H:%M} UTC"
            + (f"  ({o['by']})" if o["by"] else "")
        )


def _answer(order_id: str, sku: str | None, status: str, by: str | None, note: str) -> None:
    from ctower.cli import operator_name, settings_or_exit, store_or_exit

    settings = settings_or_exit()
    if sku is None:
        with store_or_exit(settings, hint=" (or give --sku)") as client:
            rows = client.query(
                "SELECT sku FROM action_orders FINAL WHERE order_id = {id:String}",
                parameters={"id": order_id},
            ).result_rows
        if not rows:
            raise click.ClickException(f"no order {order_id} in the store (or give --sku)")
        sku = str(rows[0][0])
    answer = ActionStatus(order_id=order_id, sku=sku, status=status,  # type: ignore[arg-type]
                          by=by or operator_name(), ts=int(time.time() * 1000), note=note)
    try:
        publish_status(settings, answer)
    except ActionError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{order_id}: {status} by {answer.by} written to {settings.topic('action-status')}")


ORDER = click.argument("order_id")
SKU = click.option("--sku", default=None, help="The order's SKU (default: read from the store).")
BY = click.option("--by", default=None, help="Who answers (default: the OS user).")
NOTE = click.option("--note", default="", help="Why, in words.")


@actions.command()
@ORDER
@SKU
@BY
@NOTE
def approve(order_id: str, sku: str | None, by: str | None, note: str) -> None:
    """Approve a proposed order."""
    _answer(order_id, sku, "approved", by, note)


@actions.command()
@ORDER
@SKU
@BY
@NOTE
def reject(order_id: str, sku: str | None, by: str | None, note: str) -> None:
    """Reject an order that is not received yet."""
    _answer(order_id, sku, "rejected", by, note)


@actions.command()
@ORDER
@click.argument("status", type=click.Choice(["dispatched", "received"]))
@SKU
@BY
@NOTE
def mark(order_id: str, status: str, sku: str | None, by: str | None, note: str) -> None:
    """Record that an order was dispatched or received (what a warehouse system says)."""
    _answer(order_id, sku, status, by, note)

