"""``ctower tasks``: customer service's list of parcels to look at, and closing one.

The list reads ``shipment_tasks`` (the sink's copy of ``ct.tasks``). Handling a
task writes the closed task to ``ct.tasks`` (same ``task_id``, ``closed_by`` the
person): the store keeps it closed; the lane rules need not know, since they
never open a task twice for the same shipment and kind.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
import msgspec
from kafka import KafkaProducer

from ctower.schemas.control import encoder
from ctower.schemas.tasks import ShipmentTask

TASKS_SQL = """
SELECT task_id, kind, status, shipment_id, order_id, member_id, carrier, region, district,
       detail, message, opened_at, closed_at, closed_by, ts
FROM shipment_tasks FINAL
{where}
ORDER BY opened_at, task_id
LIMIT {limit:UInt32}
"""
_detail = msgspec.json.Decoder(dict[str, Any])


def tasks(client: Any, *, open_only: bool = True, limit: int = 1000) -> list[dict[str, Any]]:
    """The tasks as the store has them (each at its latest), oldest first."""
    where = "WHERE status = 'open'" if open_only else ""
    result = client.query(TASKS_SQL.replace("{where}", where), parameters={"limit": limit})
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def closed_by_person(row: dict[str, Any], by: str, now_ms: int) -> ShipmentTask:
    """The task of a store row, closed by ``by`` now."""
    return ShipmentTask(
        task_id=row["task_id"], shipment_id=row["shipment_id"], order_id=row["order_id"],
        member_id=row["member_id"], carrier=row["carrier"], region=row["region"],
        district=row["district"], kind=row["kind"], status="closed",
        detail=_detail.decode(row["detail"] or "{}"), message=row["message"],
        opened_at=int(row["opened_at"].timestamp() * 1000), closed_at=now_ms, closed_by=by,
        ts=now_ms,
    )


def describe(t: dict[str, Any]) -> str:
    """One task as ``ctower tasks list`` prints it: what, whose, where, since, and the
    message (a not-shipped order has no shipment or carrier yet: ``-``)."""
    where = f"{t['carrier']} {t['region']}".strip() + (
        f"/{t['district']}" if t["district"] else "")
    return (f"{t['task_id']}  {t['kind']:<11} {t['status']:<6} shipment "
            f"{t['shipment_id'] or '-'} order {t['order_id'] or '-'} member "
            f"{t['member_id'] or '-'}  {where or '-'}  since {t['opened_at']:%m-%d %H:%M}\n"
            f"    {t['message']}")


@click.group("tasks")
def tasks_group() -> None:
    """Customer-service tasks: late, stale and failed parcels, paid orders never shipped."""


@tasks_group.command("list")
@click.option("--all", "everything", is_flag=True, help="Closed tasks too.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
def list_tasks(everything: bool, as_json: bool) -> None:
    """The open tasks, oldest first, with the message to send the customer."""
    from ctower.cli import settings_or_exit, store_or_exit

    with store_or_exit(settings_or_exit()) as client:
        found = tasks(client, open_only=not everything)
    if as_json:
        click.echo(json.dumps(found, default=str, ensure_ascii=False, indent=2))
        return
    if not found:
        click.echo("no open tasks" if not everything else "no tasks")
    for t in found:
        click.echo(describe(t))


@tasks_group.command()
@click.argument("task_id")
@click.option("--by", default=None, help="Who handled it (default: the OS user).")
def handle(task_id: str, by: str | None) -> None:
    """Close a task: the customer was contacted."""
    from ctower.cli import operator_name, settings_or_exit, store_or_exit

    settings = settings_or_exit()
    with store_or_exit(settings) as client:
        rows = [t for t in tasks(client, open_only=False) if t["task_id"] == task_id]
    if not rows:
        raise click.ClickException(f"no task {task_id} in the store")
    if rows[0]["status"] != "open":
        raise click.ClickException(f"{task_id} is already closed ({rows[0]['closed_by']})")
    who = by or operator_name()
    task = closed_by_person(rows[0], who, int(time.time() * 1000))
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all",
                             client_id="ctower-tasks")
    try:
        producer.send(settings.topic("tasks"), key=task.task_id.encode(),
                      value=encoder.encode(task)).get(timeout=10)
    except Exception as exc:  # kafka-python raises many types
        raise click.ClickException(f"could not write to {settings.topic('tasks')}: {exc}") from exc
    finally:
        producer.close(timeout=10)
    click.echo(f"{task_id}: closed by {who}")
