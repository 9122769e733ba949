"""Labels in Chinese (default) and English."""

from __future__ import annotations

LABELS: dict[str, dict[str, str]] = {
    "zh": {
        "title": "零售控制塔",
        "range": "时间范围（分钟）",
        "gmv": "成交额 GMV",
        "paid_orders": "支付订单",
        "orders": "下单",
        "scans": "扫码次数",
        "conversion": "扫码转化率",
        "pickups_served": "已自提",
        "minute": "分钟",
        "top_stores": "门店成交额排行",
        "empty": "暂无数据：等待第一个完整的分钟窗口。",
        "store_unreachable": "无法连接数据存储，稍后自动重试",
    },
    "en": {
        "title": "Retail control tower",
        "range": "Time range (minutes)",
        "gmv": "GMV",
        "paid_orders": "Paid orders",
        "orders": "Orders",
        "scans": "Scans",
        "conversion": "Scan-to-order conversion",
        "pickups_served": "Pickups served",
        "minute": "Minute",
        "top_stores": "Top stores by GMV",
        "empty": "No data yet: waiting for the first closed minute.",
        "store_unreachable": "Cannot reach the store; retrying",
    },
}


def text(language: str) -> dict[str, str]:
    return LABELS.get(language, LABELS["zh"])
