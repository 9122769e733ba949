"""Customer-service tasks on the logistics page: the parcels a person should look at.

The page's lane figures say which carrier is in trouble; this says which
customers are waiting (a parcel past its ETA, stuck in a stage, or failed, or
a paid order that never shipped), who they are (the member) and the message
to send them. Its words live here, not in ``i18n.py``: a
few phrases only this section uses.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from clickhouse_connect.driver.client import Client

from ctower.dashboard.context import PageContext, live, show, store_guard
from ctower.dashboard.queries.sql import frame
from ctower.dashboard.readable import table

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "title": "客服任务（待处理包裹与订单）", "none": "没有待处理的包裹。", "task": "任务",
        "kind": "情况", "shipment": "运单", "order": "订单", "carrier": "承运商",
        "district": "片区", "opened_at": "发现于", "message": "建议话术", "member": "会员",
        "past_eta": "超过预计送达", "stale": "环节停滞", "failed": "派送失败",
        "not_shipped": "付款未发货",
        "help": "处理后用 ctower tasks handle <任务> 关闭；包裹恢复（或订单发货）时自动关闭。",
    },
    "en": {
        "title": "Customer-service tasks (parcels and orders to look at)", "none": "No open tasks.",
        "task": "Task", "kind": "What", "shipment": "Shipment", "order": "Order",
        "carrier": "Carrier", "district": "District", "opened_at": "Since",
        "message": "Message to the customer", "member": "Member", "past_eta": "Past ETA",
        "stale": "Stuck", "failed": "Failed", "not_shipped": "Not shipped",
        "help": "Close one with ctower tasks handle <task> once handled; "
        "it closes by itself when the parcel moves again (or, for an order, ships).",
    },
}
TASK_COLUMNS = ["task_id", "kind", "shipment_id", "order_id", "member_id", "carrier", "region",
                "district", "message", "opened_at"]
KINDS = ("past_eta", "stale", "failed", "not_shipped")


def open_tasks(client: Client) -> pd.DataFrame:
    """Open tasks, oldest first (few: one per troubled parcel)."""
    return frame(
        client,
        """
        SELECT task_id, kind, shipment_id, order_id, member_id, carrier, region, district,
               message, opened_at
        FROM shipment_tasks FINAL
        WHERE status = 'open'
        ORDER BY opened_at, task_id
        LIMIT 500
        """,
        optional=True, columns=TASK_COLUMNS,
    )


def tasks_section(ctx: PageContext) -> None:
    words = WORDS.get(ctx.lang, WORDS["en"])

    @live(ctx)
    def section() -> None:
        st.subheader(words["title"])
        with store_guard(ctx):
            found = ctx.q(open_tasks)
            if found.empty:
                st.caption(words["none"])
                return
            counts = found["kind"].value_counts()
            cols = st.columns(len(KINDS))
            for col, kind in zip(cols, KINDS, strict=True):
                col.metric(words[kind], f"{int(counts.get(kind, 0)):,}")
            found = found.assign(kind=[words.get(str(k), str(k)) for k in found["kind"]])
            st.caption(words["help"])
            show(table(found, {
                "task_id": words["task"], "kind": words["kind"],
                "shipment_id": words["shipment"], "order_id": words["order"],
                "member_id": words["member"], "carrier": words["carrier"],
                "district": words["district"],
                "opened_at": words["opened_at"], "message": words["message"]},
                lang=ctx.lang, tz=ctx.tz, times=["opened_at"]))

    section()
