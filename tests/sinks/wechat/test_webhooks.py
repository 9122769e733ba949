"""Webhook URLs are secrets: where they come from, and that they are masked
wherever they could show (settings, logs, error details)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from ctower.settings import SettingsError, load_settings
from ctower.sinks.wechat.command import _MaskingFilter
from ctower.sinks.wechat.webhooks import (
    env_name,
    mask_secrets,
    mask_url,
    resolve_webhooks,
    robot_label,
)

KEY = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"
URL = f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={KEY}"


def test_masking_keeps_only_the_last_four_characters_of_the_key() -> None:
    assert mask_url(URL) == "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=***5aaa"
    assert robot_label("ops", URL) == "ops (key ***5aaa)"
    text = f"ClientConnectorError: Cannot connect to {URL}&debug=1 (refused)"
    masked = mask_secrets(text)
    assert KEY not in masked and "key=***5aaa&debug=1" in masked
    assert mask_secrets("key=short") == "key=***"


def test_environment_wins_over_the_secrets_file(
    tmp_path: Path, write_secrets: Callable[[dict[str, str]], Path]
) -> None:
    secrets = write_secrets({"ops": URL, "stock-east": URL + "b"})
    settings = load_settings(data_dir=tmp_path, webhook_secrets_file=secrets)
    env = {env_name("stock-east"): "https://example.test/send?key=fromenv1234"}
    assert env_name("stock-east") == "CTOWER_WEBHOOK_STOCK_EAST"
    urls = resolve_webhooks(settings, ["ops", "stock-east"], env)
    assert urls == {"ops": URL, "stock-east": "https://example.test/send?key=fromenv1234"}


def test_a_missing_or_bad_url_names_the_variable_and_never_echoes_the_url(
    tmp_path: Path, write_secrets: Callable[[dict[str, str]], Path]
) -> None:
    settings = load_settings(data_dir=tmp_path)
    with pytest.raises(SettingsError, match="CTOWER_WEBHOOK_OPS"):
        resolve_webhooks(settings, ["ops"], {})
    with pytest.raises(SettingsError) as error:
        resolve_webhooks(settings, ["ops"], {"CTOWER_WEBHOOK_OPS": "ftp://x/?key=" + KEY})
    assert "CTOWER_WEBHOOK_OPS" in str(error.value) and KEY not in str(error.value)
    bad = write_secrets({"ops": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"})
    with pytest.raises(SettingsError, match=r"CTOWER_WEBHOOK_SECRETS_FILE.*no key="):
        resolve_webhooks(load_settings(data_dir=tmp_path, webhook_secrets_file=bad), ["ops"], {})


def test_settings_refuse_a_missing_file_and_mask_a_key_in_any_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTOWER_ALERT_ROUTES_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(SettingsError, match="CTOWER_ALERT_ROUTES_FILE"):
        load_settings()
    monkeypatch.delenv("CTOWER_ALERT_ROUTES_FILE")
    monkeypatch.setenv("CTOWER_DASHBOARD_URL", f"https://dash.example/?key={KEY}")
    shown = load_settings().public_dict()
    assert KEY not in str(shown)
    monkeypatch.setenv("CTOWER_ALERT_RATE_PER_MINUTE", "0")
    with pytest.raises(SettingsError, match="CTOWER_ALERT_RATE_PER_MINUTE"):
        load_settings()


def test_the_log_filter_masks_keys_in_messages_and_tracebacks() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "posting to %s failed", (URL,),
                               None)
    try:
        raise RuntimeError(f"boom at {URL}")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert _MaskingFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert KEY not in formatted
    assert "key=***5aaa" in formatted and "boom at" in formatted
