"""Settings: environment, optional file, and errors that name the setting."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from ctower.settings import SECRET_FIELDS, Settings, SettingsError, load_settings


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
        ("CTOWER_STANDBY_REPLICAS", "-1", "CTOWER_STANDBY_REPLICAS"),
        ("CTOWER_LANGUAGE", "fr", "CTOWER_LANGUAGE"),
        ("CTOWER_WORKER_ADVERTISED_URL", "worker-1:6066", "CTOWER_WORKER_ADVERTISED_URL"),
        ("CTOWER_WORKER_WEB_BIND", "0.0.0.0/0", "CTOWER_WORKER_WEB_BIND"),
        ("CTOWER_SINK_METRICS_PORT", "70000", "CTOWER_SINK_METRICS_PORT"),
        ("CTOWER_ALERTS_METRICS_PORT", "nine", "CTOWER_ALERTS_METRICS_PORT"),
        ("CTOWER_METRICS_BIND", "0.0.0.0 ", None),  # stripped: fine
        ("CTOWER_METRICS_BIND", "all of them", "CTOWER_METRICS_BIND"),
        ("CTOWER_SYSTEM_PARTITION_STUCK_SECONDS", "-5", "CTOWER_SYSTEM_PARTITION_STUCK_SECONDS"),
        ("CTOWER_SYSTEM_STREAM_SILENT_FACTOR", "0", "CTOWER_SYSTEM_STREAM_SILENT_FACTOR"),
        ("CTOWER_SYSTEM_DEAD_LETTER_WINDOW_SECONDS", "0",
         "CTOWER_SYSTEM_DEAD_LETTER_WINDOW_SECONDS"),
        ("CTOWER_SYSTEM_LAG_MIN_GROWTH", "lots", "CTOWER_SYSTEM_LAG_MIN_GROWTH"),
        ("CTOWER_LATENCY_SLICE_MS", "0.05", "CTOWER_LATENCY_SLICE_MS"),
        ("CTOWER_LATENCY_SLICE_MS", "500", "CTOWER_LATENCY_SLICE_MS"),
        ("CTOWER_LATENCY_SLICE_MS", "0", None),  # the kernel's default
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


def test_worker_bind_address_and_advertised_url_are_separate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings(worker_web_port=6070)
    assert settings.worker_bind == "127.0.0.1"
    assert settings.worker_url == "http://127.0.0.1:6070"
    monkeypatch.setenv("CTOWER_WORKER_WEB_BIND", "0.0.0.0")
    monkeypatch.setenv("CTOWER_WORKER_ADVERTISED_URL", "http://worker-2:6066/")
    settings = load_settings()
    assert settings.worker_bind == "0.0.0.0"
    assert settings.worker_url == "http://worker-2:6066"


def test_clashing_ports_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTOWER_DASHBOARD_PORT", "9093")  # the local broker's controller port
    # named by the variables an operator sets, not the fields
    with pytest.raises(SettingsError, match=r"CTOWER_DASHBOARD_PORT and CTOWER_KAFKA_PORT \+ 1"):
        load_settings()
    monkeypatch.delenv("CTOWER_DASHBOARD_PORT")
    monkeypatch.setenv("CTOWER_ALERTS_METRICS_PORT", "8124")  # the store's front
    with pytest.raises(SettingsError, match="CTOWER_ALERTS_METRICS_PORT and CTOWER_STORE_HTTP"):
        load_settings()
    monkeypatch.setenv("CTOWER_ALERTS_METRICS_PORT", "0")  # off: no port to clash
    monkeypatch.setenv("CTOWER_SINK_METRICS_PORT", "0")
    assert load_settings().sink_metrics_port == 0


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


# --- secrets -------------------------------------------------------------

SECRETS = {
    "store_password": "pw-7f3a9c21",
    "operator_token": "op-5be04d77",
    "coupon_api_token": "cp-91c2e6aa",
}


def _with_secrets(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in SECRETS.items():
        monkeypatch.setenv(f"CTOWER_{name.upper()}", value)
    return load_settings()


def _leaks(text: str) -> list[str]:
    return [value for value in SECRETS.values() if value in text]


def test_every_secret_setting_is_known() -> None:
    assert set(SECRET_FIELDS) == set(SECRETS)


def test_secrets_never_show_in_repr_str_format_or_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _with_secrets(monkeypatch)
    shown = [
        repr(settings), str(settings), f"{settings}", f"{settings!r}",
        "{} {!r}".format(settings, settings),  # noqa: UP032
        json.dumps(settings.public_dict()), settings.model_dump_json(), str(settings.model_dump()),
        repr(settings.store_password), str(settings.operator_token),
    ]
    for text in shown:
        assert not _leaks(text), text
    assert settings.public_dict()["store_password"] == "***"
    assert settings.store_password.get_secret_value() == SECRETS["store_password"]
    assert settings.coupon_api_token is not None
    assert settings.coupon_api_token.get_secret_value() == SECRETS["coupon_api_token"]


def test_secrets_never_show_in_log_lines(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _with_secrets(monkeypatch)
    log = logging.getLogger("test.settings")
    with caplog.at_level(logging.DEBUG, logger="test.settings"):
        log.info("settings %s", settings)
        log.info("settings %r", settings)
        log.info("public %s", settings.public_dict())
        try:
            raise RuntimeError(f"failed with {settings!r}")
        except RuntimeError:
            log.exception("boom")
    assert "SecretStr" in caplog.text
    assert not _leaks(caplog.text)


def test_a_validation_error_never_quotes_a_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(f"CTOWER_{name.upper()}", value)
    monkeypatch.setenv("CTOWER_DASHBOARD_PORT", "9093")  # a model-level error: input is everything
    given = "pw-" + "init-0c9d"  # (a traceback quotes this line: the value is not on it)
    with pytest.raises(SettingsError) as named:
        load_settings(store_password=given)
    assert "CTOWER_DASHBOARD_PORT" in str(named.value)
    assert not _leaks(str(named.value)) and given not in str(named.value)
    with pytest.raises(SettingsError) as typed:  # a secret of the wrong type: named, not quoted
        load_settings(operator_token=["op", given])
    assert "CTOWER_OPERATOR_TOKEN" in str(typed.value) and given not in str(typed.value)
    with pytest.raises(ValidationError) as raw:  # pydantic's own error, as a traceback shows it
        Settings(store_password=given)
    with caplog.at_level(logging.ERROR, logger="test.settings"):
        logging.getLogger("test.settings").error("bad", exc_info=raw.value)
    for text in (str(raw.value), repr(raw.value), caplog.text):
        assert not _leaks(text) and given not in text, text


def test_child_env_carries_the_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _with_secrets(monkeypatch).child_env({"PATH": "/usr/bin"})
    for name, value in SECRETS.items():
        assert env[f"CTOWER_{name.upper()}"] == value
    for name in SECRETS:
        monkeypatch.delenv(f"CTOWER_{name.upper()}")
    for key, value in env.items():  # what the child reads from that environment
        monkeypatch.setenv(key, value)
    child = load_settings()
    assert child.store_password.get_secret_value() == SECRETS["store_password"]


def test_unset_secrets_stay_unset_in_children(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRETS:
        monkeypatch.delenv(f"CTOWER_{name.upper()}", raising=False)
    settings = load_settings()
    assert not settings.operator_token and settings.coupon_api_token is None
    env = settings.child_env({})
    assert "CTOWER_COUPON_API_TOKEN" not in env and env["CTOWER_OPERATOR_TOKEN"] == ""
    assert settings.public_dict()["operator_token"] == ""


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_a_secret_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    variable = f"CTOWER_{name.upper()}"
    monkeypatch.delenv(variable, raising=False)
    secret = tmp_path / "secret"
    secret.write_text(SECRETS[name] + "\n")
    monkeypatch.setenv(f"{variable}_FILE", str(secret))
    settings = load_settings()
    value = getattr(settings, name)
    assert value.get_secret_value() == SECRETS[name]  # the trailing newline is not part of it
    assert settings.child_env({})[variable] == SECRETS[name]
    assert f"{variable}_FILE" not in settings.child_env()  # the child gets the value itself


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_a_bad_secret_file_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    variable = f"CTOWER_{name.upper()}"
    monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(f"{variable}_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match=f"{variable}_FILE"):
        load_settings()
    monkeypatch.setenv(f"{variable}_FILE", str(tmp_path))  # a folder: unreadable as a file
    with pytest.raises(SettingsError, match=f"{variable}_FILE"):
        load_settings()
    present = tmp_path / "present"
    present.write_text("x-file-value\n")
    monkeypatch.setenv(f"{variable}_FILE", str(present))
    monkeypatch.setenv(variable, "x-env-value")
    with pytest.raises(SettingsError, match=f"{variable}_FILE and {variable}") as both:
        load_settings()
    assert "x-file-value" not in str(both.value) and "x-env-value" not in str(both.value)


def test_a_password_in_a_store_url_is_masked_when_shown() -> None:
    shown = load_settings(store_dsn="http://reader:pw-in-url@db.example:8123").public_dict()
    assert "pw-in-url" not in json.dumps(shown)
