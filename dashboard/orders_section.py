"""Open action orders on the inventory page: what the stock rules asked for, and
where it stands; an operator approves or rejects one here.

On the inventory page rather than a page of its own: an order answers a
shortage that page lists. Its words live here, not in ``i18n.py``: a dozen
phrases only this section uses. An answer is an ``ActionStatus`` on
``ct.action-status`` (never a write to the store), as ``ctower actions``
writes it.
"""

from __future__ import annotations

import time

import streamlit as st

from ctower.dashboard.context import PageContext, live, show, store_guard
from ctower.dashboard.queries.actions import open_orders
from ctower.dashboard.readable import table

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "title": "调拨单与预包单（未完成）", "none": "没有未完成的单据。",
        "order": "单号", "kind": "类型", "status": "状态", "source": "发出方",
        "destination": "接收方", "qty": "数量", "due_at": "到期", "created_at": "下单",
        "by": "最后处理", "transfer": "调拨", "prepack": "预包", "proposed": "待审批",
        "approved": "已审批", "dispatched": "已发出", "received": "已签收",
        "rejected": "已拒绝", "expired": "已过期", "approve": "审批通过", "reject": "拒绝",
        "note": "备注", "pick": "单据", "done": "已提交", "failed": "提交失败",
        "locked": "输入操作口令后可审批或拒绝。",
    },
    "en": {
        "title": "Transfer and pre-pack orders (open)", "none": "No open orders.",
        "order": "Order", "kind": "Kind", "status": "Status", "source": "From",
        "destination": "To", "qty": "Qty", "due_at": "Due", "created_at": "Issued",
        "by": "Last by", "transfer": "Transfer", "prepack": "Pre-pack", "proposed": "Proposed",
        "approved": "Approved", "dispatched": "Dispatched", "received": "Received",
        "rejected": "Rejected", "expired": "Expired", "approve": "Approve", "reject": "Reject",
        "note": "Note", "pick": "Order", "done": "Sent", "failed": "Could not send",
        "locked": "Enter the operator token to approve or reject.",
    },
}


def orders_section(ctx: PageContext) -> None:
    """The open orders (a live fragment), then the approve / reject control."""
    words = WORDS.get(ctx.lang, WORDS["en"])

    @live(ctx)
    def section() -> None:
        st.subheader(words["title"])
        with store_guard(ctx):
            found = ctx.q(open_orders)
            if found.empty:
                st.caption(words["none"])
                return
            found = found.assign(
                kind=[words.get(str(k), str(k)) for k in found["kind"]],
                status=[words.get(str(s), str(s)) for s in found["status"]],
            )
            show(table(found, {
                "order_id": words["order"], "kind": words["kind"], "status": words["status"],
                "sku": "SKU", "qty": words["qty"], "source": words["source"],
                "destination": words["destination"], "due_at": words["due_at"],
                "created_at": words["created_at"], "by": words["by"]},
                lang=ctx.lang, tz=ctx.tz, times=["due_at", "created_at"]))

    section()
    answer_control(ctx, words)


def answer_control(ctx: PageContext, words: dict[str, str]) -> None:
    from ctower.control.actions import publish_status
    from ctower.schemas.actions import ActionStatus

    if not ctx.controls_configured or ctx.operator is None:
        st.caption(words["locked"])
        return
    found = None
    with store_guard(ctx):
        found = ctx.q(open_orders)
    if found is None or found.empty:
        return
    skus = dict(zip(found["order_id"], found["sku"], strict=True))
    labels = {
        str(o): f"{o} · {words.get(str(s), s)} · {q} × {k} · {src} → {dst}"
        for o, s, q, k, src, dst in zip(found["order_id"], found["status"], found["qty"],
                                        found["sku"], found["source"], found["destination"],
                                        strict=True)
    }
    order_id = st.selectbox(words["pick"], list(labels), format_func=labels.__getitem__,
                            key="order_pick")
    note = st.text_input(words["note"], key="order_note")
    cols = st.columns(2)
    chosen = ("approved" if cols[0].button(words["approve"], key="order_approve", type="primary")
              else "rejected" if cols[1].button(words["reject"], key="order_reject") else None)
    if chosen is None or not order_id:
        return
    try:
        publish_status(ctx.settings, ActionStatus(
            order_id=order_id, sku=str(skus[order_id]), status=chosen,  # type: ignore[arg-type]
            by=ctx.operator, ts=int(time.time() * 1000), note=note.strip()))
    except Exception as exc:  # Kafka down or refused: say so, keep the page
        st.error(f"{words['failed']}: {exc}")
        return
    st.success(f"{words['done']}: {order_id} {words[chosen]}")
