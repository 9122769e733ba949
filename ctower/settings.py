"""One typed settings object for every ctower process.

Values come from, highest priority first: environment variables
(``CTOWER_<FIELD>``; ``KAFKA_BOOTSTRAP`` also works for the broker), then an
optional TOML file named by ``CTOWER_CONFIG``, then the defaults below. A bad
value stops start-up with :class:`SettingsError`, whose message names the
setting, so an operator never has to read a traceback to find a typo.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ctower.errors import CtowerError

_PASSED_TO_CHILDREN = ("CTOWER_WEBHOOK_", "CTOWER_RULE_")
"""Variable families read outside Settings, which :meth:`Settings.child_env` keeps."""

STREAMS = ("scan", "order", "pickup", "logistics", "inventory", "coupon", "service")
"""The event streams of the domain, one Kafka topic each (``service``: customer
service tickets, issue 16)."""

CONTROL_TOPICS = (
    "coupon-policy",
    "coupon-decisions",
    "coupon-signals",
    "alerts",
    "dead-letter",
    "aggregates",
    "stock-levels",
    "pickup-levels",
    "stock-moves",
    "lanes",
    "shipping",
    "alert-deliveries",
    "alert-acks",
    "actions",
    "action-status",
    "tasks",
    "shadow-alerts",
    "shadow-signals",
)
"""Control and output topics. ``aggregates`` carries closed windows to the sink;
``stock-moves``, ``lanes`` and ``shipping`` are internal: events re-keyed for the
rules (by SKU, by carrier and region, by order). ``actions`` carries the rules'
transfer and pre-pack orders, ``action-status`` the answers to them (keyed by SKU), ``tasks`` the
customer-service tasks of single shipments and orders. ``shadow-alerts`` and
``shadow-signals`` carry what the shadow (candidate) rules would raise: never delivered."""


class SettingsError(CtowerError, RuntimeError):
    """A setting has a bad value; the message names it and says what is wanted."""


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ctower"


class _SecretFiles(PydanticBaseSettingsSource):
    """``CTOWER_<SECRET>_FILE=/run/secrets/x``: the secret is the file's text
    (trailing newline stripped), as compose and Kubernetes mount secrets.

    Naming both ``CTOWER_<SECRET>`` and ``CTOWER_<SECRET>_FILE`` is refused
    (which one was meant?); an unreadable file names its variable.
    """

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is done in __call__

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name in SECRET_FIELDS:
            variable = f"CTOWER_{name.upper()}"
            path = os.environ.get(f"{variable}_FILE")
            if not path:
                continue
            if variable in os.environ:
                raise SettingsError(f"{variable}_FILE and {variable} are both set: use one")
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or type(exc).__name__
                raise SettingsError(f"{variable}_FILE: cannot read {path}: {why}") from None
            found[name] = text.rstrip("\r\n")
        return found


class Settings(BaseSettings):
    """Everything a ctower process can be told from outside.

    Durations are seconds. Secrets (tokens, passwords; webhook URLs are read
    outside this object) are :class:`~pydantic.SecretStr`: repr, str, logs and
    :meth:`public_dict` show them masked; ``.get_secret_value()`` is the value.
    Each can also come from a file: ``CTOWER_<NAME>_FILE``.
    """

    model_config = SettingsConfigDict(
        env_prefix="CTOWER_",
        extra="forbid",
        validate_default=True,
        populate_by_name=True,
        hide_input_in_errors=True,  # a validation error never quotes what it was given
    )

    # --- Kafka -----------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "CTOWER_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP", "kafka_bootstrap"
        ),
        description="host:port[,host:port] of an existing cluster; unset = the local broker.",
    )
    kafka_port: int = Field(9092, ge=1024, le=65534, description="Port of the local broker.")
    kafka_version: str = Field("4.1.1", description="Apache Kafka version fetched from Maven.")
    kafka_initial_rebalance_delay_ms: int = Field(
        3000, ge=0, le=300_000,
        description="The local broker's group.initial.rebalance.delay.ms: how long a new "
        "consumer group waits for more members before sharing the partitions out.",
    )
    topic_prefix: str = Field("ct.", description="Prefix of every topic name.")
    topic_partitions: int = Field(4, ge=1, le=256, description="Partitions of new topics.")

    # --- Store (ClickHouse) ----------------------------------------------
    store_dsn: str | None = Field(
        default=None,
        description="chdb:///abs/path (embedded) or http(s)://host:8123; unset = chdb in data_dir.",
    )
    store_user: str = Field("default", description="ClickHouse user (server mode).")
    store_password: SecretStr = Field(
        SecretStr(""), description="ClickHouse password (server mode); secret."
    )
    store_http_port: int = Field(
        8124, ge=1024, le=65535,
        description="Embedded mode: port where the sink serves ClickHouse's HTTP interface.",
    )
    sink_batch_rows: int = Field(10_000, ge=1, description="Rows per ClickHouse insert, at most.")
    sink_batch_seconds: float = Field(1.0, gt=0, description="Longest wait before an insert.")

    # --- Worker ----------------------------------------------------------
    app_id: str = Field("ctower", description="Faust application id (consumer group).")
    worker_web_host: str = Field(
        "127.0.0.1",
        description="Host of the worker web server: its bind address and the host of its "
        "advertised URL, unless worker_web_bind / worker_advertised_url say otherwise.",
    )
    worker_web_port: int = Field(6066, ge=1024, le=65535, description="Worker web port.")
    worker_role: Literal["all", "aggregate", "coupons"] = Field(
        "all",
        description="What a worker runs: all (every stream, the rules and the coupon "
        "service), aggregate (every stream but coupons, and the rules) or coupons (the "
        "coupon stream and the coupon API, in a consumer group of its own: "
        "<app_id>-coupons; what `ctower coupons serve` runs). Run aggregate and coupons "
        "side by side to keep reservations fast while the aggregation is saturated.",
    )
    aggregate_nice: int = Field(
        5, ge=0, le=19,
        description="CPU niceness a worker of role aggregate takes at start (never a higher "
        "priority than it was started with): where cores are short, the coupon server and "
        "the broker run before the aggregation's catch-up work, which waits a little "
        "longer instead. 0 = the same priority as every other process.",
    )
    latency_slice_ms: float = Field(
        0.3, ge=0, le=100,
        description="CPU time slice, in ms, that the processes a shopper waits on ask Linux "
        "for: the coupon server (role coupons) and the broker `ctower kafka up` starts. A "
        "slice shorter than a busy process's lets them take a core as soon as they wake, "
        "instead of waiting for that slice to end; it changes no share of the CPU. Linux "
        "6.12 or later (older kernels ignore it); 0 = the kernel's default, else 0.1 to 100.",
    )
    worker_web_bind: str | None = Field(
        None,
        description="Address the worker web server listens on (0.0.0.0 in a container); "
        "unset = worker_web_host.",
    )
    worker_advertised_url: str | None = Field(
        None,
        description="URL other workers reach this one at (coupon requests are forwarded to "
        "a campaign's owner there; in compose the service's hostname, e.g. "
        "http://worker-1:6066); unset = http://<worker_web_host>:<worker_web_port>.",
    )
    data_dir: Path = Field(default_factory=_default_data_dir, description="Local state and data.")
    grace_seconds: float = Field(
        10.0, ge=0, description="Event-time lateness still counted in its window."
    )
    idle_close_seconds: float = Field(
        10.0, gt=0,
        description="A partition idle this long closes windows that ended before now - grace.",
    )
    batch_max_messages: int = Field(2_000, ge=1, description="Messages per processing batch.")
    batch_within_seconds: float = Field(0.2, gt=0, description="Longest wait to fill a batch.")
    standby_replicas: int = Field(
        0, ge=0, le=8,
        description="Standby copies of each state partition kept warm by other workers "
        "(Faust's table_standby_replicas). 0: a worker taking partitions over reads "
        "their changelog; 1: it has them at once, but every worker applies every other "
        "worker's state writes as they come.",
    )
    ts_max_past_days: float = Field(
        400.0, gt=0, description="Events older than this are malformed (dead-lettered)."
    )
    ts_max_future_seconds: float = Field(
        3600.0, ge=0, description="Events further in the future than this are malformed."
    )
    max_event_kb: int = Field(
        64, ge=1, le=900,
        description="Largest event (a message, or one element of an envelope); a larger one "
        "is dead-lettered as too_large.",
    )
    dead_letter_raw_kb: int = Field(
        64, ge=1, le=512,
        description="How much of a malformed event its dead letter carries (with the whole "
        "length and sha256); at most 512 so a dead letter always fits in a Kafka message.",
    )
    dedup_horizon_seconds: float = Field(
        960.0, ge=0,
        description="Event time over which a re-sent event (same identity) is counted once; "
        "default the longest window (15 min) plus grace. 0 turns de-duplication off.",
    )
    dedup_max_entries: int = Field(
        1_000_000, ge=1000,
        description="Identities one worker keeps over all its streams (about 140 bytes "
        "each); past it the oldest minutes are forgotten before the horizon.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["plain", "json"] = Field(
        "plain", description="Log lines as plain text or as JSON objects, one a line."
    )

    # --- Decisions (rules, coupons) ----------------------------------------
    master_data_file: Path | None = Field(
        None,
        description="JSON master data (stores, regions, SKUs, campaigns), as written by "
        "`ctower simulate --chain`; unset = rule defaults.",
    )
    rules_file: Path | None = Field(
        None,
        description="TOML rules file (thresholds; see rules/rules.toml), re-read when "
        "it changes; unset = the defaults.",
    )
    shadow_rules_file: Path | None = Field(
        None,
        description="A candidate TOML rules file run beside the rules in force: its alerts "
        "and coupon decisions go to the shadow topics and tables only, never to a robot; "
        "re-read when it changes; unset = no shadow.",
    )

    # --- Coupons -----------------------------------------------------------
    coupon_api_token: SecretStr | None = Field(
        None,
        description="Bearer token the coupon API asks of reservations and policy changes "
        "(secret, environment only); unset = the API answers 503.",
    )
    coupon_default_window_seconds: int = Field(
        3600, ge=1, le=31 * 86400,
        description="Window a campaign counts issuance in before any policy names one.",
    )
    coupon_route_timeout_seconds: float = Field(
        2.0, gt=0, le=60,
        description="Longest wait for the worker that owns a campaign when a request is "
        "forwarded to it.",
    )
    action_auto_approve_qty: int = Field(
        50, ge=0, le=10_000_000,
        description="Transfer and pre-pack orders of at most this many units are approved "
        "by the rules themselves; larger ones wait for a person (0 = every order does).",
    )

    # --- Dashboard -------------------------------------------------------
    dashboard_host: str = Field(
        "127.0.0.1", description="Streamlit bind address (0.0.0.0 inside a container)."
    )
    dashboard_port: int = Field(8501, ge=1024, le=65535, description="Streamlit port.")
    language: Literal["zh", "en"] = Field("zh", description="Language of labels and messages.")
    dashboard_refresh_seconds: float = Field(
        2.0, ge=0, le=300,
        description="How often the dashboard's live figures refresh; 0 = only on interaction.",
    )
    operator_token: SecretStr = Field(
        SecretStr(""),
        description="Password or token that unlocks the dashboard's controls (coupon caps, "
        "pause/resume, alert acknowledgement); secret, environment only; empty = locked.",
    )
    operator_timezone: str = Field(
        "Asia/Shanghai",
        description="IANA time zone the dashboard shows times in (the operators' wall clock).",
    )

    # --- Alerts to WeChat Work --------------------------------------------
    alert_routes_file: Path | None = Field(
        None,
        description="TOML routing of alerts to WeChat Work group robots; unset = no delivery.",
    )
    webhook_secrets_file: Path | None = Field(
        None,
        description="TOML file of robot name = webhook URL (secret); CTOWER_WEBHOOK_<ROBOT> "
        "variables win over it.",
    )
    alert_rate_per_minute: int = Field(
        20, ge=1, le=1000, description="Messages per robot per rate window (WeChat allows 20)."
    )
    alert_rate_window_seconds: float = Field(
        60.0, gt=0, le=3600,
        description="The rate window ('minute'); shorter only for tests.",
    )
    alert_retry_base_seconds: float = Field(
        1.0, gt=0, description="First back-off after a failed send (doubles, with jitter)."
    )
    alert_retry_max_seconds: float = Field(
        60.0, gt=0, description="Longest back-off between two tries of one message."
    )
    alert_send_timeout_seconds: float = Field(
        5.0, gt=0, le=120, description="Longest wait for the webhook's answer."
    )
    alert_escalate_after_seconds: float = Field(
        900.0, ge=0, le=7 * 86400,
        description="An open alert nobody acknowledged (or resolved) for this long goes to "
        "its route's escalate_to route as well; 0 = never escalate.",
    )
    dashboard_url: str | None = Field(
        None,
        description="Base URL of the dashboard linked from alert messages; "
        "unset = http://<dashboard_host>:<dashboard_port>.",
    )

    # --- Metrics and system alerts (the pipeline watches itself) ----------
    metrics_bind: str = Field(
        "127.0.0.1",
        description="Address the sink's and the alert service's /metrics servers listen on "
        "(0.0.0.0 in a container); the worker serves /metrics on its web port.",
    )
    sink_metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of the sink's Prometheus /metrics; 0 = off."
    )
    alerts_metrics_port: int = Field(
        0, ge=0, le=65535,
        description="Port of the alert service's Prometheus /metrics; 0 = off.",
    )
    system_stream_silent_min_seconds: float = Field(
        300.0, ge=0,
        description="A stream a worker has seen is silent after at least this long without "
        "a message (and system_stream_silent_factor times its usual gap); 0 = never alert.",
    )
    system_stream_silent_factor: float = Field(
        5.0, gt=0, description="How many of its usual gaps a stream may be silent for."
    )
    system_lag_growing_seconds: float = Field(
        300.0, ge=0,
        description="A worker's consumer lag that grew over this long (never back to where "
        "it was) raises system_lag_growing; 0 = never alert.",
    )
    system_lag_min_growth: int = Field(
        1000, ge=1, description="Messages the lag must have grown by over that time."
    )
    system_dead_letters_per_minute: float = Field(
        60.0, ge=0,
        description="Dead letters per minute (over system_dead_letter_window_seconds) above "
        "which a worker raises system_dead_letter_rate; 0 = never alert.",
    )
    system_dead_letter_window_seconds: float = Field(
        300.0, gt=0, le=86400, description="Window the dead-letter rate is measured over."
    )
    system_partition_stuck_seconds: float = Field(
        300.0, ge=0,
        description="A partition with messages waiting whose position has not moved for this "
        "long raises system_partition_stuck; 0 = never alert.",
    )
    system_sink_behind_seconds: float = Field(
        120.0, ge=0,
        description="The sink not caught up with Kafka for this long raises "
        "system_sink_behind; 0 = never alert.",
    )
    system_store_unreachable_seconds: float = Field(
        10.0, ge=0,
        description="The sink's inserts failing on an unreachable store for this long raise "
        "system_store_unreachable; 0 = never alert.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings, env_settings, _SecretFiles(settings_cls)
        ]
        config_file = os.environ.get("CTOWER_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise SettingsError(f"CTOWER_CONFIG: no such file: {config_file}")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        for part in value.split(","):
            if not re.fullmatch(r"[A-Za-z0-9._\-\[\]:]+:\d{1,5}", part.strip()):
                raise ValueError(f"expected host:port[,host:port], got {value!r}")
        return value.strip()

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._\-]{0,100}", value):
            raise ValueError("only letters, digits, '.', '_' and '-' are allowed in topic names")
        return value

    @field_validator("store_dsn")
    @classmethod
    def _check_dsn(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if value.startswith("chdb://"):
            path = value[len("chdb://"):]
            if not path.startswith("/"):
                raise ValueError("an embedded store needs an absolute path: chdb:///abs/path")
            return value
        if re.fullmatch(r"https?://[^/\s]+(:\d+)?/?", value):
            return value.rstrip("/")
        raise ValueError("expected chdb:///abs/path or http(s)://host:port")

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _ports_distinct(self) -> Settings:
        # named by their variables: that is what an operator set
        ports = {
            "CTOWER_KAFKA_PORT": self.kafka_port,
            "CTOWER_KAFKA_PORT + 1 (the broker's controller)": self.kafka_port + 1,
            "CTOWER_STORE_HTTP_PORT": self.store_http_port,
            "CTOWER_WORKER_WEB_PORT": self.worker_web_port,
            "CTOWER_DASHBOARD_PORT": self.dashboard_port,
        }
        for name in ("sink_metrics_port", "alerts_metrics_port"):  # 0 = off
            if getattr(self, name):
                ports[f"CTOWER_{name.upper()}"] = getattr(self, name)
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise ValueError(f"{name} and {seen[port]} are both {port}")
            seen[port] = name
        return self

    @field_validator("alert_routes_file", "webhook_secrets_file", mode="before")
    @classmethod
    def _existing_file(cls, value: object) -> Path | None:
        if value is None or str(value).strip() == "":
            return None
        path = Path(str(value)).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path

    @field_validator("latency_slice_ms")
    @classmethod
    def _slice_in_kernel_range(cls, value: float) -> float:
        if value and value < 0.1:
            raise ValueError("0 (the kernel's default) or 0.1 to 100 ms: "
                             "Linux takes no shorter slice")
        return value

    @field_validator("worker_web_bind")
    @classmethod
    def _check_bind(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if not re.fullmatch(r"[A-Za-z0-9._\-:\[\]]+", value.strip()):
            raise ValueError("expected an address or host name, e.g. 0.0.0.0")
        return value.strip()

    @field_validator("metrics_bind")
    @classmethod
    def _check_metrics_bind(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._\-:\[\]]+", value.strip()):
            raise ValueError("expected an address or host name, e.g. 0.0.0.0")
        return value.strip()

    @field_validator("worker_advertised_url")
    @classmethod
    def _check_advertised_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if not re.fullmatch(r"https?://[^/\s:]+(:\d{1,5})?/?", value.strip()):
            raise ValueError("expected http(s)://host[:port], e.g. http://worker-1:6066")
        return value.strip().rstrip("/")

    @field_validator("operator_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r} (e.g. Asia/Shanghai)") from None
        return value.strip()

    @field_validator("dashboard_url")
    @classmethod
    def _check_dashboard_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if not re.fullmatch(r"https?://\S+", value.strip()):
            raise ValueError("expected an http(s):// URL")
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _retry_bounds(self) -> Settings:
        if self.alert_retry_max_seconds < self.alert_retry_base_seconds:
            raise ValueError(
                "alert_retry_max_seconds must be at least alert_retry_base_seconds"
            )
        return self

    # --- Derived values ---------------------------------------------------
    @property
    def bootstrap(self) -> str:
        """The bootstrap servers to use: the configured cluster or the local broker."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    @property
    def uses_local_kafka(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def dsn(self) -> str:
        return self.store_dsn or f"chdb://{self.data_dir / 'clickhouse'}"

    @property
    def store_is_embedded(self) -> bool:
        return self.dsn.startswith("chdb://")

    @property
    def chdb_path(self) -> Path:
        if not self.store_is_embedded:
            raise SettingsError("store_dsn: not an embedded (chdb://) store")
        return Path(self.dsn[len("chdb://"):])

    @property
    def worker_bind(self) -> str:
        """Where the worker web server listens."""
        return self.worker_web_bind or self.worker_web_host

    @property
    def worker_url(self) -> str:
        """The URL other workers (and forwarded coupon requests) reach this worker at."""
        return self.worker_advertised_url or (
            f"http://{self.worker_web_host}:{self.worker_web_port}"
        )

    @property
    def dashboard_link(self) -> str:
        """Where alert messages link to: the configured URL or the local dashboard."""
        return self.dashboard_url or f"http://{self.dashboard_host}:{self.dashboard_port}"

    def topic(self, name: str) -> str:
        """The full topic name of a stream or control topic (``scan`` -> ``ct.scan``)."""
        return f"{self.topic_prefix}{name}"

    def child_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment that gives a child process exactly these settings.

        ``base`` (default: this process's environment) loses its own CTOWER_
        variables and KAFKA_BOOTSTRAP first, so nothing leaks in from outside;
        except the families that are not settings fields and that a child has
        no other way to get: webhook URLs (secrets, CTOWER_WEBHOOK_<ROBOT>) and
        rule overrides (CTOWER_RULE_<SECTION>__<FIELD>).
        """
        env = {
            k: v for k, v in (os.environ if base is None else base).items()
            if k != "KAFKA_BOOTSTRAP"
            and (not k.startswith("CTOWER_") or k.startswith(_PASSED_TO_CHILDREN))
            and k.upper() not in _FIELD_VARIABLES
        }
        values = self.model_dump(mode="json")
        for name in SECRET_FIELDS:  # the real values: the child needs them
            secret = getattr(self, name)
            values[name] = None if secret is None else secret.get_secret_value()
        for name, value in values.items():
            if value is not None:
                env[f"CTOWER_{name.upper()}"] = str(value)
        env["PYTHONSAFEPATH"] = "1"
        return env

    def secret_values(self) -> list[str]:
        """The values of the secret settings that are set (for log masking)."""
        found = []
        for name in SECRET_FIELDS:
            secret = getattr(self, name)
            if secret is not None and secret.get_secret_value():
                found.append(secret.get_secret_value())
        return found

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to print: secrets are masked."""
        shown = self.model_dump(mode="json")
        for name in SECRET_FIELDS:
            secret = getattr(self, name)
            shown[name] = None if secret is None else ("***" if secret.get_secret_value() else "")
        for name, value in shown.items():  # a webhook URL is a secret wherever it appears
            if isinstance(value, str) and "key=" in value:
                shown[name] = re.sub(r"key=[^&\s]+", "key=***", value)
            if isinstance(value, str) and "@" in value:  # so is a password in a URL
                shown[name] = re.sub(r"(://[^/@\s:]*:)[^/@\s]+@", r"\1***@", shown[name])
        return shown


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning validation failures into one readable message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            env_name = f"CTOWER_{field.upper()}" if field != "settings" else "settings"
            # the input is quoted only for a single field that is not a secret:
            # a model-level error's input is everything, the secrets included
            shown = field in Settings.model_fields and field not in SECRET_FIELDS
            got = f" (got {error.get('input')!r})" if shown else ""
            problems.append(f"{env_name}: {error['msg']}{got}")
        raise SettingsError("bad setting: " + "; ".join(problems)) from None


SECRET_FIELDS = tuple(
    name for name, field in Settings.model_fields.items()
    if SecretStr in (field.annotation, *get_args(field.annotation))
)
"""The secret settings: masked everywhere, and each readable from ``CTOWER_<NAME>_FILE``."""

_FIELD_VARIABLES = frozenset(f"CTOWER_{name.upper()}" for name in Settings.model_fields)
"""Settings' own variables: a child gets them from the settings, never from outside."""
