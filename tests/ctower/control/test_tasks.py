"""Customer-service tasks in the store: a closed task wins over its opening, ``ctower
tasks list`` reads the open ones, and a person's handling is the same task closed."""

from __future__ import annotations

import numpy as np
from clickhouse_connect.driver.client import Client

from ctower.control.tasks import closed_by_person, describe, tasks
from ctower.schemas.events import Logistics
from ctower.schemas.migrations import apply_migrations
from ctower.schemas.tasks import ShipmentTask
from ctower.sinks.clickhouse.columns import Chunk, control_writers, raw_writers

T0 = 1_790_000_000_000


def task(task_id: str, status: str, ts: int, **fields: object) -> ShipmentTask:
    values: dict[str, object] = {
        "shipment_id": f"SH-{task_id}", "order_id": f"O-{task_id}", "carrier": "SF",
        "region": "EAST", "kind": "past_eta", "detail": {"eta": T0}, "message": "late",
        "opened_at": T0,
    }
    values.update(fields)
    return ShipmentTask(task_id=task_id, status=status, ts=ts, **values)  # type: ignore[arg-type]


def test_tasks_in_the_store_and_a_person_closing_one(store: Client) -> None:
    apply_migrations(store)
    writer = control_writers()["tasks"].bind(store)

    def insert(records: list[ShipmentTask]) -> None:
        writer.insert(store, Chunk(records, np.zeros(len(records), np.int32),
                                    np.arange(len(records), dtype=np.int64), "ct.tasks"), "arrow")

    # a person's close (wall clock) may be behind a later re-send of the opening
    insert([task("T-1", "open", T0), task("T-1", "closed", T0 - 5, closed_by="li",
                                            closed_at=T0 - 5),
            task("T-1", "open", T0 + 10),
            task("T-2", "open", T0, kind="failed", district="Pudong", detail={},
                 member_id="M-7")])
    found = tasks(store)
    assert [(t["task_id"], t["kind"], t["district"], t["member_id"]) for t in found] == [
        ("T-2", "failed", "Pudong", "M-7")]
    line = describe(found[0])
    assert "member M-7" in line and "SF EAST/Pudong" in line and "shipment SH-T-2" in line
    closed = closed_by_person(found[0], "wang", T0 + 60_000)
    assert (closed.status, closed.closed_by, closed.opened_at, closed.order_id) == (
        "closed", "wang", T0, "O-T-2")
    assert closed.member_id == "M-7"
    insert([closed])
    assert tasks(store) == []
    # a paid order never shipped: no shipment, no carrier yet
    insert([task("T-3", "open", T0, kind="not_shipped", shipment_id="", carrier="",
                 region="", member_id="M-9", detail={"store_id": "S1"})])
    [not_shipped] = tasks(store)
    assert describe(not_shipped).split("\n")[0].split()[1:10] == [
        "not_shipped", "open", "shipment", "-", "order", "O-T-3", "member", "M-9", "-"]
    every = {t["task_id"]: t["closed_by"] for t in tasks(store, open_only=False)}
    assert every == {"T-1": "li", "T-2": "wang", "T-3": ""}
    # logistics events carry an optional district, stored with them
    events = [Logistics(ts=T0, shipment_id=f"SH{n}", order_id="O1", origin_type="store",  # type: ignore[arg-type]
                        origin_id="S1", carrier="SF", region="EAST", status="failed",
                        district=district) for n, district in enumerate(("Pudong", None))]
    raw = raw_writers()["logistics"].bind(store)
    raw.insert(store, Chunk(events, np.zeros(2, np.int32), np.arange(2, dtype=np.int64),
                             "ct.logistics"), "arrow")
    rows = store.query("SELECT shipment_id, district FROM logistics_events ORDER BY 1")
    assert rows.result_rows == [("SH0", "Pudong"), ("SH1", None)]
