"""Words for the codes the system stores, in Chinese and English.

The store keeps codes (``stock_cover``, ``paused``, ``not_utf8``...): stable,
short, easy to query. An operator reads words. Every code a page can show
has a label here in both languages, grouped by what it names (a test checks
each group against the code lists of the system: alert kinds, dead-letter
and quarantine reasons, delivery results, coupon reasons...). A code no
group knows (a newer part of the system) is shown as it is rather than
hidden.
"""

from __future__ import annotations

import math
from typing import Any

CODES: dict[str, dict[str, dict[str, str]]] = {
    "severity": {
        "zh": {"info": "提示", "warning": "警告", "critical": "严重"},
        "en": {"info": "Info", "warning": "Warning", "critical": "Critical"},
    },
    "alert_kind": {
        "zh": {
            "restock": "补货预警", "stock_out": "缺货", "pickup_congestion": "自提拥堵",
            "shipment_stale": "运单停滞", "shipment_failed": "配送失败",
            "eta_passed": "超过预计送达", "carrier_on_time": "承运商准时率下降",
            "demand_spike": "需求激增", "action_overdue": "调拨单逾期",
            "district_failed": "片区派送失败", "order_not_shipped": "付款未发货",
            "complaint_burst": "投诉激增", "complaint_sla": "投诉即将超时",
            "guide_capacity": "导购运力不足", "guide_late": "导购配送延误",
            "system_stream_silent": "数据流静默", "system_lag_growing": "消费积压增长",
            "system_dead_letter_rate": "死信率过高", "system_partition_stuck": "分区停滞",
            "system_sink_behind": "入库落后", "system_store_unreachable": "存储不可达",
        },
        "en": {
            "restock": "Restock",
            "stock_out": "Stock-out",
            "pickup_congestion": "Pickup congestion",
            "shipment_stale": "Stale shipments", "shipment_failed": "Failed deliveries",
            "eta_passed": "Past ETA", "carrier_on_time": "Carrier on-time rate down",
            "demand_spike": "Demand spike", "action_overdue": "Order overdue",
            "district_failed": "Failing district", "order_not_shipped": "Paid, not shipped",
            "complaint_burst": "Complaint burst", "complaint_sla": "Complaint SLA running out",
            "guide_capacity": "Guides short", "guide_late": "Guide running late",
            "system_stream_silent": "Stream silent", "system_lag_growing": "Lag growing",
            "system_dead_letter_rate": "Dead-letter rate high",
            "system_partition_stuck": "Partition stuck", "system_sink_behind": "Sink behind",
            "system_store_unreachable": "Store unreachable",
        },
    },
    "alert_state": {
        "zh": {
            "open": "未关闭", "resolved": "已恢复", "acked": "已确认", "unacked": "待确认",
            "assigned": "已指派", "closed_by_operator": "人工关闭",
        },
        "en": {
            "open": "Open", "resolved": "Resolved", "acked": "Acknowledged",
            "unacked": "Not acknowledged", "assigned": "Assigned",
            "closed_by_operator": "Resolved by operator",
        },
    },
    "alert_action": {
        "zh": {"ack": "确认", "assign": "指派", "resolve": "处理完毕"},
        "en": {"ack": "Acknowledged", "assign": "Assigned", "resolve": "Resolved"},
    },
    "coupon_state": {
        "zh": {"open": "正常发放", "throttled": "限流中", "paused": "已暂停"},
        "en": {"open": "Open", "throttled": "Throttled", "paused": "Paused"},
    },
    "coupon_reason": {
        "zh": {
            "open": "正常", "cleared": "条件解除", "pickup_pressure": "自提压力过高",
            "stock_cover": "库存可售时长不足", "policy_paused": "运营手动暂停",
            "policy_resumed": "运营恢复发放", "policy_removed": "策略已撤销",
            "pickup_pressure_cleared": "自提压力已回落", "stock_cover_cleared": "库存已恢复",
            "cap_shifted": "上限倾斜至本店", "cap_shift_ended": "上限倾斜结束",
        },
        "en": {
            "open": "Open",
            "cleared": "Condition cleared",
            "pickup_pressure": "Pickup pressure high",
            "stock_cover": "Stock cover short", "policy_paused": "Paused by marketing",
            "policy_resumed": "Resumed by marketing", "policy_removed": "Policy removed",
            "pickup_pressure_cleared": "Pickup pressure back down",
            "stock_cover_cleared": "Stock cover back",
            "cap_shifted": "Cap shifted here", "cap_shift_ended": "Cap shift ended",
        },
    },
    "reservation": {
        "zh": {
            "granted": "已发放", "cap_reached": "达到活动上限", "store_cap_reached": "达到门店上限",
            "member_limit": "超过每人限领", "paused": "活动暂停", "throttled": "限流",
            "stock_short": "库存不足", "unknown_campaign": "未知活动",
        },
        "en": {
            "granted": "Granted", "cap_reached": "Campaign cap reached",
            "store_cap_reached": "Store cap reached", "member_limit": "Per-member limit",
            "paused": "Paused", "throttled": "Throttled", "stock_short": "Stock short",
            "unknown_campaign": "Unknown campaign",
        },
    },
    "shipment_status": {
        "zh": {
            "created": "已创建", "picked_up": "已揽收", "in_transit": "运输中",
            "out_for_delivery": "派送中", "delivered": "已送达", "failed": "配送失败",
            "returned": "已退回",
        },
        "en": {
            "created": "Created", "picked_up": "Picked up", "in_transit": "In transit",
            "out_for_delivery": "Out for delivery", "delivered": "Delivered", "failed": "Failed",
            "returned": "Returned",
        },
    },
    "origin_type": {
        "zh": {"central_warehouse": "中心仓", "store": "门店", "guide": "导购"},
        "en": {"central_warehouse": "Central warehouse", "store": "Store", "guide": "Guide"},
    },
    "bad_input": {
        "zh": {
            "not_json": "不是 JSON",
            "not_utf8": "不是 UTF-8 文本",
            "not_an_object": "不是 JSON 对象",
            "missing_field": "缺少字段", "wrong_type": "字段类型错误", "unknown_value": "未知取值",
            "out_of_range": "数值超出范围", "duplicate_key": "字段重复", "too_large": "消息过大",
            "too_deep": "嵌套过深", "bad_timestamp": "时间格式错误",
            "ts_out_of_window": "时间超出允许范围", "empty_batch": "空批次", "invalid": "无效事件",
            "wrong_shape": "窗口结构不符", "refused_by_store": "数据库拒收",
        },
        "en": {
            "not_json": "Not JSON", "not_utf8": "Not UTF-8", "not_an_object": "Not a JSON object",
            "missing_field": "Missing field", "wrong_type": "Wrong type",
            "unknown_value": "Unknown value", "out_of_range": "Out of range",
            "duplicate_key": "Key twice", "too_large": "Too large", "too_deep": "Nested too deep",
            "bad_timestamp": "Bad timestamp", "ts_out_of_window": "Time out of window",
            "empty_batch": "Empty batch", "invalid": "Invalid event",
            "wrong_shape": "Window of the wrong shape", "refused_by_store": "Refused by the store",
        },
    },
    "delivery_result": {
        "zh": {
            "delivered": "已送达", "digest": "已送达（汇总）", "retry": "重试中",
            "rate_limited": "被限频", "broken": "通道故障", "rejected": "消息被拒",
            "crashed": "发送中断（已重发）", "rerouted": "转由备用通道", "not_sent": "未推送",
        },
        "en": {
            "delivered": "Delivered", "digest": "Delivered in a digest", "retry": "Retrying",
            "rate_limited": "Rate limited", "broken": "Route broken", "rejected": "Rejected",
            "crashed": "Interrupted (sent again)", "rerouted": "Rerouted to the fallback",
            "not_sent": "Not sent",
        },
    },
    "stream": {
        "zh": {
            "scan": "扫码", "order": "订单", "pickup": "自提", "logistics": "物流",
            "inventory": "库存", "coupon": "优惠券", "service": "客服",
        },
        "en": {
            "scan": "Scans", "order": "Orders", "pickup": "Pickup", "logistics": "Logistics",
            "inventory": "Inventory", "coupon": "Coupons", "service": "Customer service",
        },
    },
    "transfer": {
        "zh": {"warehouse": "中心仓调拨", "store": "门店调拨", "short": "需采购补货",
               "prepack": "中心仓预打包", "pickup": "增派自提人手", "lane": "联系承运商",
               "chase": "催办调拨单"},
        "en": {"warehouse": "From the warehouse", "store": "From a nearby store",
               "short": "Order from supply", "prepack": "Pre-pack at the warehouse",
               "pickup": "More pickup staff", "lane": "Call the carrier",
               "chase": "Chase the order"},
    },
    "category": {
        "zh": {"fresh": "生鲜", "dairy": "乳品", "bakery": "烘焙", "frozen": "冷冻食品",
               "snacks": "休闲零食",
               "beverages": "饮料",
               "grain_oil": "粮油",
               "personal_care": "个人护理",
               "household": "家居日用", "baby": "母婴", "alcohol": "酒水", "pet": "宠物"},
        "en": {"fresh": "Fresh", "dairy": "Dairy", "bakery": "Bakery", "frozen": "Frozen",
               "snacks": "Snacks", "beverages": "Beverages", "grain_oil": "Grain and oil",
               "personal_care": "Personal care", "household": "Household", "baby": "Baby",
               "alcohol": "Alcohol", "pet": "Pet"},
    },
    "city": {
        "zh": {},
        "en": {"上海": "Shanghai", "杭州": "Hangzhou", "南京": "Nanjing", "广州": "Guangzhou",
               "深圳": "Shenzhen", "厦门": "Xiamen", "北京": "Beijing", "天津": "Tianjin",
               "济南": "Jinan", "武汉": "Wuhan", "长沙": "Changsha", "郑州": "Zhengzhou",
               "成都": "Chengdu", "重庆": "Chongqing", "昆明": "Kunming", "西安": "Xi'an",
               "兰州": "Lanzhou", "银川": "Yinchuan"},
    },
    "condition": {
        "zh": {
            "ok": "正常", "pressure": "自提压力", "over_capacity": "自提超容",
            "alert_critical": "严重告警", "stock_out": "缺货", "late_shipments": "逾期运单",
            "coupon_paused": "券暂停", "alerts_warning": "警告", "coupon_throttled": "券限流",
            "short_cover": "待补货", "alerts_info": "提示",
        },
        "en": {
            "ok": "OK", "pressure": "pressure", "over_capacity": "over capacity",
            "alert_critical": "critical", "stock_out": "stock-outs",
            "late_shipments": "late shipments", "coupon_paused": "coupons paused",
            "alerts_warning": "warnings", "coupon_throttled": "coupons throttled",
            "short_cover": "to restock", "alerts_info": "notices",
        },
    },
}


def is_missing(value: Any) -> bool:
    """None, NaN, NA and NaT: what a table shows as an empty cell."""
    if value is None:
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, (list, tuple, dict)) else False
    except (TypeError, ValueError):
        return isinstance(value, float) and math.isnan(value)


def code_label(group: str, code: Any, lang: str) -> str:
    """The word for ``code`` (its group's), or the code itself when unknown; '' for none."""
    if is_missing(code) or code == "":
        return ""
    labels = CODES.get(group, {}).get(lang) or CODES.get(group, {}).get("zh", {})
    return labels.get(str(code), str(code))
