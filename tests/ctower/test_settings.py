"""Settings: environment, optional file, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctower.settings import SettingsError, load_settings


def test_defaults_use_the_local_broker_and_an_embedded_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("KAFKA_BOOTSTRAP", "CTOWER_KAFKA_BOOTSTRAP", "CTOWER_STORE_DSN", "CTOWER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(data_dir=tmp_path)
    assert settings.uses_local_kafka and settings.bootstrap == "127.0.0.1:9092"
    assert settings.dsn == f"chdb://{tmp_path}/clickhouse"
    assert settings.topic("scan") == "ct.scan"


def test_kafka_bootstrap_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "broker-1:9092,broker-2:9092")
    settings = load_settings()
    assert not settings.uses_local_kafka
    assert settings.bootstrap == "broker-1:9092,broker-2:9092"


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("CTOWER_TOPIC_PARTITIONS", "many", "CTOWER_TOPIC_PARTITIONS"),
        ("CTOWER_TOPIC_PARTITIONS", "0", "CTOWER_TOPIC_PARTITIONS"),
        ("KAFKA_BOOTSTRAP", "no-port-here", "CTOWER_KAFKA_BOOTSTRAP"),
        ("CTOWER_STORE_DSN", "chdb://relative/path", "CTOWER_STORE_DSN"),
        ("CTOWER_STORE_DSN", "postgres://x", "CTOWER_STORE_DSN"),
        ("CTOWER_TOPIC_PREFIX", "bad prefix!", "CTOWER_TOPIC_PREFIX"),
        ("CTOWER_GRACE_SECONDS", "-1", "CTOWER_GRACE_SECONDS"),
        ("CTOWER_LANGUAGE", "fr", "CTOWER_LANGUAGE"),
        ("CTOWER_NO_SUCH_SETTING", "1", None),
    ],
)
def test_a_bad_value_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, named: str | None
) -> None:
    monkeypatch.setenv(env, value)
    if named is None:  # unknown CTOWER_ variables are ignored by pydantic-settings' env source
        load_settings()
        return
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert named in str(error.value)


def test_clashing_ports_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTOWER_DASHBOARD_PORT", "9093")  # the local broker's controller port
    with pytest.raises(SettingsError, match="dashboard_port"):
        load_settings()


def test_settings_file_and_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "ctower.toml"
    config.write_text('topic_prefix = "shop."\ngrace_seconds = 30\nstore_password = "s3cret"\n')
    monkeypatch.setenv("CTOWER_CONFIG", str(config))
    monkeypatch.setenv("CTOWER_GRACE_SECONDS", "5")
    settings = load_settings()
    assert settings.topic_prefix == "shop."
    assert settings.grace_seconds == 5  # the environment wins over the file
    assert settings.public_dict()["store_password"] == "***"


def test_missing_settings_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CTOWER_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(SettingsError, match="CTOWER_CONFIG"):
        load_settings()


def test_child_env_passes_secrets_and_rule_overrides_but_not_stray_settings() -> None:
    base = {
        "PATH": "/usr/bin",
        "CTOWER_WEBHOOK_OPS": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc",
        "CTOWER_RULE_PICKUP__THROTTLE_ABOVE": "0.9",
        "CTOWER_WEBHOOK_SECRETS_FILE": "/elsewhere/secrets.toml",
        "CTOWER_TOPIC_PREFIX": "outside.",
        "KAFKA_BOOTSTRAP": "elsewhere:9092",
    }
    env = load_settings(topic_prefix="mine.").child_env(base)
    assert env["CTOWER_WEBHOOK_OPS"] == base["CTOWER_WEBHOOK_OPS"]
    assert env["CTOWER_RULE_PICKUP__THROTTLE_ABOVE"] == "0.9"
    assert env["CTOWER_TOPIC_PREFIX"] == "mine."
    assert "CTOWER_WEBHOOK_SECRETS_FILE" not in env  # a setting, and unset here
    assert env.get("KAFKA_BOOTSTRAP") != "elsewhere:9092"
    assert env["PATH"] == "/usr/bin"
