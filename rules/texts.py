"""The words of alerts, in Chinese (default) and English.

The on-duty staff read these in a WeChat Work group on a phone: one line
saying what is wrong where, with the number that crossed the threshold, and
one line saying what to do. Values come from the finding's evidence, so the
text can never disagree with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctower.rules.alert_book import Finding


class _Values(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


MESSAGES: dict[str, dict[str, str]] = {
    "zh": {
        "restock": "补货预警：{location_id} 的 {sku} 库存 {on_hand} 件，"
        "按近1小时销速 {velocity_per_h}/小时 仅够 {cover_h} 小时（提前期 {lead_time_h} 小时）",
        "stock_out": "缺货：{location_id} 的 {sku} 库存为 {on_hand}，"
        "近 {window_minutes} 分钟仍有 {scans} 次扫码",
        "pickup_congestion": "自提拥堵：{store_id} 等待 {waiting} 人（容量 {capacity}），"
        "近 {window_minutes} 分钟 P90 等待 {p90_wait_min} 分钟",
        "shipment_stale": "物流停滞：{carrier} 在 {region} 已 {silence_min} 分钟无运单更新"
        "（按其以往节奏应有约 {expected_updates} 次），在途 {open} 单中 {stale} 单超时",
        "shipment_failed": "配送失败：{carrier} 在 {region} 近 {window_minutes} 分钟 "
        "{failed} 单失败或退回（占 {share_pct}%）",
        "eta_passed": "逾期未达：{carrier} 在 {region} 有 {past_eta} 单超过预计送达时间"
        "（在途 {open}）",
        "carrier_on_time": "准时率下降：{carrier} 在 {region} 近 {window_minutes} 分钟"
        "准时率 {on_time_pct}%（阈值 {threshold_pct}%，{deliveries} 单）",
        "demand_spike": "需求激增：{store_id} 的 {sku} 近5分钟扫码 {scans} 次，"
        "是基线 {baseline} 的 {ratio} 倍",
        "action_overdue": "调拨单逾期：{order_id}（{source} → {destination}，{sku} {qty} 件）"
        "到期 {late_min} 分钟后仍未签收（状态 {status}）",
        "district_failed": "片区派送失败：{carrier} 在 {region} 的 {district} "
        "近 {window_minutes} 分钟 {failed} 单派送失败或退回",
        "order_not_shipped": "付款未发货：{store_id} 的订单 {order_id}（{fulfillment}）"
        "付款 {minutes} 分钟后仍未创建运单（时限 {threshold_minutes} 分钟）",
        "complaint_burst": "投诉激增：{sku} 近 {window_minutes} 分钟 {complaints} 起投诉"
        "（{stores} 家门店），主要问题：{topics_text}",
        "complaint_sla": "投诉即将超时：{ticket_id}（{topic}，{store_id}）已 {age_h} 小时未处理，"
        "还剩 {hours_left} 小时（时限 {sla_hours} 小时）",
        "guide_capacity": "导购运力不足：{store_id} 有 {waiting} 单等待导购超过 {wait_minutes} 分钟"
        "（最久 {oldest_wait_min} 分钟），在班可接单导购 {available}/{guides} 人，待配送 {open} 单",
        "guide_late": "导购配送延误：{store_id} 的导购 {guide_id} 近 {window_minutes} 分钟"
        "有 {late} 单超时（超过预计送达 {grace_minutes} 分钟），"
        "今日已送 {deliveries}/{daily_cap} 单",
    },
    "en": {
        "restock": "Restock: {sku} at {location_id} has {on_hand} on hand, "
        "{cover_h} h of cover at {velocity_per_h}/h (lead time {lead_time_h} h)",
        "stock_out": "Stock-out: {sku} at {location_id} has {on_hand} on hand "
        "and {scans} scans in the last {window_minutes} min",
        "pickup_congestion": "Pickup congestion: {waiting} waiting at {store_id} "
        "(capacity {capacity}), p90 wait {p90_wait_min} min over {window_minutes} min",
        "shipment_stale": "Stale shipments: {carrier} in {region} sent no update for "
        "{silence_min} min (about {expected_updates} expected at its usual pace); "
        "{stale} of {open} open shipments overdue",
        "shipment_failed": "Failed deliveries: {failed} of {carrier} in {region} "
        "in {window_minutes} min ({share_pct}%)",
        "eta_passed": "Past ETA: {past_eta} shipments of {carrier} in {region} "
        "(of {open} open)",
        "carrier_on_time": "On-time rate down: {carrier} in {region} at {on_time_pct}% "
        "over {window_minutes} min (threshold {threshold_pct}%, {deliveries} deliveries)",
        "demand_spike": "Demand spike: {sku} at {store_id} scanned {scans} times in 5 min, "
        "{ratio}x its baseline {baseline}",
        "action_overdue": "Order overdue: {order_id} ({qty} of {sku}, {source} to "
        "{destination}) not received {late_min} min after its due time (status {status})",
        "district_failed": "Failing district: {failed} deliveries of {carrier} in {district} "
        "({region}) failed or came back in {window_minutes} min",
        "order_not_shipped": "Paid, not shipped: order {order_id} of {store_id} "
        "({fulfillment}) has no shipment {minutes} min after payment (limit "
        "{threshold_minutes} min)",
        "complaint_burst": "Complaint burst: {complaints} complaints about {sku} in "
        "{window_minutes} min ({stores} stores); top topics: {topics_text}",
        "complaint_sla": "Complaint SLA running out: {ticket_id} ({topic}, {store_id}) open "
        "{age_h} h, {hours_left} h left of {sla_hours} h",
        "guide_capacity": "Guides short: {waiting} orders at {store_id} waited for a guide over "
        "{wait_minutes} min (longest {oldest_wait_min} min); {available} of {guides} guides can "
        "take one, {open} guide deliveries open",
        "guide_late": "Guide running late: {late} deliveries of guide {guide_id} ({store_id}) "
        "more than {grace_minutes} min past their ETA in {window_minutes} min; "
        "{deliveries} of {daily_cap} delivered today",
    },
}

ACTIONS: dict[str, dict[str, str]] = {
    "zh": {
        "warehouse": "建议从中心仓 {source} 调拨 {qty} 件",
        "store": "建议从附近门店 {source}（{distance_km} 公里）调拨 {qty} 件",
        "short": "中心仓 {source} 与附近门店均库存不足，请联系采购补货 {qty} 件",
        "prepack": "建议中心仓 {source} 预先打包备货 {qty} 件",
        "chase": "请联系 {source} 核实调拨单进度",
        "pickup": "建议增派自提人手；店内自提券已限流",
        "lane": "请联系承运商 {carrier} 核实 {region} 的运单状态",
        "ship": "请联系发货仓或导购核实订单 {order_id} 的发货情况，客服任务 {task_id} 已创建",
        "guides": "建议调配附近门店导购支援，或将订单转交快递配送",
        "guide": "请联系导购 {guide_id} 了解配送情况，必要时转派其他导购",
    },
    "en": {
        "warehouse": "Transfer {qty} from the central warehouse {source}",
        "store": "Transfer {qty} from the nearby store {source} ({distance_km} km)",
        "short": "The warehouse {source} and nearby stores are short: order {qty} from supply",
        "prepack": "Pre-pack {qty} at the central warehouse {source}",
        "chase": "Ask {source} where the order is",
        "pickup": "Add pickup staff; store-pickup coupons are throttled here",
        "lane": "Ask carrier {carrier} about its shipments in {region}",
        "ship": "Ask the shipping warehouse or guide about order {order_id}; customer-service "
        "task {task_id} is open",
        "guides": "Borrow guides from a nearby store, or hand the orders to a carrier",
        "guide": "Call guide {guide_id} about the deliveries; reassign them if needed",
    },
}


def render(finding: Finding, language: str) -> tuple[str, str | None]:
    """(message, suggested action) for a finding, in ``language`` (zh or en)."""
    lang = language if language in MESSAGES else "zh"
    values = _Values(finding.evidence)
    for name in ("region", "store_id", "sku", "carrier"):
        if getattr(finding, name) is not None:
            values.setdefault(name, getattr(finding, name))
    message = MESSAGES[lang][finding.kind].format_map(values)
    action = None
    if finding.action:
        template = ACTIONS[lang].get(str(finding.action.get("kind")))
        if template:
            action = template.format_map(_Values({**values, **finding.action}))
    return message, action
