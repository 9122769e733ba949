"""Message rendering: byte limits, clean UTF-8 cuts, mentions only in text
messages, the labels of both languages, digests that count every alert."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from ctower.schemas.control import Alert
from ctower.streams.sinks.wechat.messages import (
    MARKDOWN_LIMIT,
    TEXT_LIMIT,
    Mentions,
    cut_utf8,
    render_alert,
    render_digest,
    utf8_len,
    worst_first,
)

DASH = "http://dash.example:8501"


@pytest.mark.parametrize("limit", range(1, 40))
def test_cut_utf8_never_splits_a_character_and_respects_the_limit(limit: int) -> None:
    text = "库存为零A😀库存\n为零B" * 3
    cut = cut_utf8(text, limit, "…")
    assert utf8_len(cut) <= limit
    cut.encode("utf-8")  # a split character would have been dropped, never half-kept
    assert text.startswith(cut[:-1]) or cut == "…"[: len(cut)]


def test_cut_utf8_keeps_what_fits_and_prefers_a_line_end() -> None:
    assert cut_utf8("短", 10, "…") == "短"
    text = "第一行内容\n" + "二" * 5
    assert cut_utf8(text, utf8_len("第一行内容\n二") + 3, "…") == "第一行内容…"
    # no line end near: cut mid-line at a character boundary (3 bytes per character)
    assert cut_utf8("一二三四五", 8, "") == "一二"


def test_an_alert_in_markdown_carries_severity_scope_evidence_action_and_link(
    make_alert: Callable[..., Alert],
) -> None:
    alert = make_alert(severity="critical", evidence={"on_hand": 0, "cover_h": 1.23456})
    message = render_alert(alert, lang="zh", dashboard=DASH, delivery_id="d123")
    assert message.kind == "markdown"
    assert message.body["msgtype"] == "markdown"
    content = message.content
    assert content.startswith('### <font color="warning">严重</font> 缺货 S001')
    assert "区域 east，门店 S001，商品 " + alert.sku in content
    assert "on_hand=0，cover_h=1.235" in content
    assert "建议：从 S002 调拨 20 件" in content
    assert f"[在看板中查看]({DASH}/?alert_id={alert.alert_id}&kind=stock_out&store_id=S001)" in (
        content)
    assert f"告警 {alert.alert_id} · 投递 d123" in content


def test_english_labels(make_alert: Callable[..., Alert]) -> None:
    alert = make_alert(severity="info", message="Stock is zero")
    content = render_alert(alert, lang="en", dashboard=DASH, delivery_id="d1").content
    assert '<font color="info">Info</font> Stock-out S001' in content
    assert "Scope: region east, store S001" in content
    assert "Suggested action: " in content
    assert "[Open in the dashboard]" in content
    assert not re.search(r"[\u4e00-\u9fff]", content.replace(alert.action or "", ""))


def test_a_resolution_is_green_and_says_when(make_alert: Callable[..., Alert]) -> None:
    alert = make_alert(status="resolved", resolved_at=1_700_000_000_000)
    content = render_alert(alert, lang="zh", dashboard=DASH, delivery_id="d1").content
    assert content.startswith('### <font color="info">已恢复</font>')
    assert "恢复：2023-11-15" in content


def test_a_huge_alert_is_cut_to_4096_bytes_but_keeps_title_link_and_ids(
    make_alert: Callable[..., Alert],
) -> None:
    alert = make_alert(message="库存告警" * 2000, evidence={f"k{i}": "值" * 50 for i in range(80)})
    content = render_alert(alert, lang="zh", dashboard=DASH, delivery_id="dX").content
    assert MARKDOWN_LIMIT - 10 <= utf8_len(content) <= MARKDOWN_LIMIT
    assert content.startswith("### ")
    assert "（内容过长，已截断）" in content
    assert content.endswith(f"告警 {alert.alert_id} · 投递 dX</font>")
    assert f"alert_id={alert.alert_id}" in content


def test_mentions_go_in_a_text_message_within_2048_bytes(
    make_alert: Callable[..., Alert],
) -> None:
    mentions = Mentions(("zhangsan", "@all"), ("13800001111",))
    alert = make_alert(message="自提排队" * 1000)
    message = render_alert(alert, lang="zh", dashboard=DASH, delivery_id="d9", mentions=mentions)
    assert message.kind == "text"
    body = message.body["text"]
    assert body["mentioned_list"] == ["zhangsan", "@all"]
    assert body["mentioned_mobile_list"] == ["13800001111"]
    assert utf8_len(body["content"]) <= TEXT_LIMIT
    assert body["content"].startswith("【警告】缺货 S001")
    assert body["content"].endswith(f"告警 {alert.alert_id} · 投递 d9")
    # resolutions do not page anybody
    resolved = make_alert(status="resolved", resolved_at=1)
    assert render_alert(resolved, lang="zh", dashboard=DASH, delivery_id="d",
                        mentions=mentions).kind == "markdown"


def test_a_digest_counts_every_alert_and_lists_the_worst_first(
    make_alert: Callable[..., Alert],
) -> None:
    alerts = (
        [make_alert(severity="info", kind="demand_spike") for _ in range(300)]
        + [make_alert(severity="warning", kind="pickup_congestion") for _ in range(150)]
        + [make_alert(severity="critical") for _ in range(40)]
        + [make_alert(status="resolved", resolved_at=1) for _ in range(10)]
    )
    message = render_digest(alerts, lang="zh", dashboard=DASH, digest_id="g1", route="ops")
    content = message.content
    assert message.kind == "digest" and message.body["msgtype"] == "markdown"
    assert utf8_len(content) <= MARKDOWN_LIMIT
    assert "共 500 条" in content
    assert "严重 40，警告 150，提示 300，已恢复 10" in content
    assert "需求激增 300，自提拥堵 150，缺货 50" in content
    listed = re.findall(r"^(\d+)\. (.*)$", content, re.M)
    assert 10 < len(listed) < 500
    shown = len(listed)
    labels = [re.search(r">(\S+)</font>", line).group(1) for _, line in listed]
    expected = (["严重"] * 40 + ["警告"] * 150 + ["提示"] * 300)[:shown]
    assert labels == expected  # the worst fill the list; resolutions come last
    assert f"另有 {500 - shown} 条，见看板" in content
    assert content.endswith("告警汇总 g1 · 500</font>")


def test_a_digest_with_mentions_is_text(make_alert: Callable[..., Alert]) -> None:
    alerts = [make_alert() for _ in range(100)]
    message = render_digest(alerts, lang="en", dashboard=DASH, digest_id="g2", route="ops",
                            mentions=Mentions(("lisi",)))
    assert message.kind == "digest" and message.body["msgtype"] == "text"
    assert message.body["text"]["mentioned_list"] == ["lisi"]
    assert utf8_len(message.content) <= TEXT_LIMIT
    assert "Total 100 alerts" in message.content


def test_worst_first_order(make_alert: Callable[..., Alert]) -> None:
    info = make_alert(severity="info")
    crit = make_alert(severity="critical")
    warn = make_alert(severity="warning")
    resolved_crit = make_alert(severity="critical", status="resolved")
    assert worst_first([info, resolved_crit, warn, crit]) == [crit, warn, info, resolved_crit]
