"""Message rendering: byte limits, clean UTF-8 cuts, mentions only in text
messages, the labels of both languages, digests that count every alert."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from ctower.schemas.control import Alert
from ctower.sinks.wechat.messages import (
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


def test_the_fulfilment_kinds_have_their_own_titles(make_alert: Callable[..., Alert]) -> None:
    alert = make_alert(kind="order_not_shipped", key="order_not_shipped:OD-1", sku=None,
                       message="付款未发货：S001 的订单 OD-1")
    assert "付款未发货 S001" in render_alert(alert, lang="zh", dashboard=DASH,
                                         delivery_id="d1").content
    district = make_alert(kind="district_failed", store_id=None, sku=None, carrier="SF")
    assert "Failing district" in render_alert(district, lang="en", dashboard=DASH,
                                              delivery_id="d2").content


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


LONG_TEXTS = {
    "ascii": "Stock of K1 at S001 is zero while scans continue. " * 60,  # 3,000 characters
    "chinese": "门店库存为零而扫码仍在继续，请尽快调拨。" * 150,  # 3,000 characters, 9,000 bytes
    "emoji": "库存😀告警A" * 500,  # 1-, 3- and 4-byte characters
}


@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.parametrize("form", ["markdown", "text"])
@pytest.mark.parametrize("text", sorted(LONG_TEXTS))
def test_a_long_free_text_is_shortened_and_the_evidence_and_action_keep_their_place(
    make_alert: Callable[..., Alert], lang: str, form: str, text: str,
) -> None:
    free = LONG_TEXTS[text]
    assert len(free) == 3000
    alert = make_alert(
        message=free, severity="critical", action="从 S002 调拨 20 件，并暂停 C7 的到店券",
        evidence={"on_hand": 0, "scans_15m": 42, "threshold": 5, "window": "14:00-14:15",
                  "cover_h": 0.0},
    )
    mentions = Mentions(("zhangsan",)) if form == "text" else Mentions()
    message = render_alert(alert, lang=lang, dashboard=DASH, delivery_id="d7",  # type: ignore[arg-type]
                           mentions=mentions)
    assert message.body["msgtype"] == form
    content = message.content
    limit = TEXT_LIMIT if form == "text" else MARKDOWN_LIMIT
    assert utf8_len(content) <= limit
    whole = utf8_len(free) < limit - 1000  # 3,000 ASCII characters fit in markdown's 4096
    if not whole:
        assert utf8_len(content) >= limit - 4  # the free text took all the room left
    labels = {"zh": ("范围：", "依据：", "建议：", "开始："),
              "en": ("Scope: ", "Evidence: ", "Suggested action: ", "Opened: ")}[lang]
    quote = "> " if form == "markdown" else ""
    lines = content.split("\n")
    # the evidence and the action are whole, each on its own line, after the text
    evidence = f"{quote}{labels[1]}" + ("，" if lang == "zh" else ", ").join(
        ["on_hand=0", "scans_15m=42", "threshold=5", "window=14:00-14:15", "cover_h=0"])
    assert evidence in lines
    assert f"{quote}{labels[2]}{alert.action}" in lines
    assert any(line.startswith(quote + labels[0]) and "S001" in line for line in lines)
    assert any(line.startswith(quote + labels[3]) for line in lines)
    # the free text is cut on a character boundary and ends with an ellipsis
    shortened = lines[1]
    if whole:
        assert shortened == free
    else:
        assert shortened.endswith("…") and free.startswith(shortened[:-1])
        assert len(shortened) > 500
    assert "内容过长" not in content and "too long" not in content  # nothing else was cut
    assert content.endswith(f"{alert.alert_id} · {'投递' if lang == 'zh' else 'delivery'} d7"
                            + ("</font>" if form == "markdown" else ""))


@pytest.mark.parametrize("form", ["markdown", "text"])
def test_when_the_facts_alone_overflow_each_keeps_its_line_and_the_text_its_start(
    make_alert: Callable[..., Alert], form: str,
) -> None:
    alert = make_alert(message="库存告警" * 2000, action="调拨" * 1000,
                       evidence={f"k{i}": "值" * 50 for i in range(80)})
    mentions = Mentions(("zhangsan",)) if form == "text" else Mentions()
    content = render_alert(alert, lang="zh", dashboard=DASH, delivery_id="d8",
                           mentions=mentions).content
    limit = TEXT_LIMIT if form == "text" else MARKDOWN_LIMIT
    assert limit - 16 <= utf8_len(content) <= limit
    quote = "> " if form == "markdown" else ""
    lines = content.split("\n")
    assert lines[1].startswith("库存告警") and lines[1].endswith("…")
    assert 200 <= utf8_len(lines[1]) <= 240
    scope = [line for line in lines if line.startswith(quote + "范围：")]
    evidence = [line for line in lines if line.startswith(quote + "依据：k0=")]
    action = [line for line in lines if line.startswith(quote + "建议：调拨")]
    opened = [line for line in lines if line.startswith(quote + "开始：")]
    assert scope and evidence and action and opened
    assert "（内容过长，已截断）" in evidence[0] and "（内容过长，已截断）" in action[0]
    assert utf8_len(evidence[0]) > 400 and utf8_len(action[0]) > 400  # fair shares


@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.parametrize("mention", [False, True])
def test_a_digest_of_long_texts_keeps_each_alert_to_one_short_line(
    make_alert: Callable[..., Alert], lang: str, mention: bool,
) -> None:
    alerts = [make_alert(message=LONG_TEXTS[name] + "\n第二行")
              for name in sorted(LONG_TEXTS) for _ in range(10)]
    message = render_digest(alerts, lang=lang, dashboard=DASH, digest_id="g3",  # type: ignore[arg-type]
                            route="ops", mentions=Mentions(("lisi",)) if mention else Mentions())
    content = message.content
    assert utf8_len(content) <= (TEXT_LIMIT if mention else MARKDOWN_LIMIT)
    listed = re.findall(r"^(\d+)\. (.*)$", content, re.M)
    assert listed and all(len(line) < 120 for _, line in listed)
    assert "第二行" not in content
    assert ("共 30 条" if lang == "zh" else "Total 30 alerts") in content
    assert content.endswith(("告警汇总" if lang == "zh" else "Alert digest") + " g3 · 30"
                            + ("" if mention else "</font>"))


def test_rendering_never_raises_for_an_alert_that_decoded(make_alert: Callable[..., Alert]
                                                          ) -> None:
    deep: object = 1
    for _ in range(2000):
        deep = [deep]
    alert = make_alert(
        opened_at=2**62, resolved_at=-(2**62), status="resolved",
        evidence={"digits": 10**5000, "deep": deep, "x": float("inf")},
        store_id="S" * 100_000, alert_id="a" * 10_000,
    )
    for mentions in (Mentions(), Mentions(("u",))):
        content = render_alert(alert, lang="zh", dashboard=DASH, delivery_id="d",
                               mentions=mentions).content
        assert utf8_len(content) <= MARKDOWN_LIMIT
    content = render_digest([alert], lang="en", dashboard=DASH, digest_id="g", route="r").content
    assert utf8_len(content) <= MARKDOWN_LIMIT
